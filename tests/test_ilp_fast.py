"""The core method of IlpSearch (LP bound, reduced-cost fixing, core MILP) and its K best
distinct plans, against exhaustive enumeration and plain HiGHS."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_ilp import _close, problem_of, random_problem, set_random_budgets

from hawq_search.core.layers import LayerInfo
from searches import BruteForceSearch, IlpSearch, Resource, SearchStatus, WeightGroup
from searches._mckp import separable_knapsack, solve_knapsack
from searches._milp_model import MilpBuilder


def _key(problem, alike: set[str], w, a) -> tuple:
    """What tells two plans apart (IlpSearch's docstring): options of groups outside
    interchangeable layers, option counts inside them, activation options."""
    own = tuple(
        int(i) for g, i in zip(problem.weight_groups, w, strict=True) if g.layer not in alike
    )
    counts = tuple(
        tuple(np.bincount(np.asarray(w)[problem.groups_of(name)], minlength=len(problem.w_bits)))
        for name in sorted(alike)
    )
    return own, counts, tuple(int(j) for j in a)


def k_best_reference(problem, k: int) -> list[float]:
    """The k best objectives over distinct plans within every budget, by enumeration."""
    active = [r for r in problem.resources if r.budget is not None]
    alike = set(MilpBuilder(problem, active).alike)
    best: dict[tuple, float] = {}
    w_opts = [np.nonzero(r)[0] for r in problem.w_allowed]
    a_opts = [np.nonzero(r)[0] for r in problem.a_allowed]
    for w in itertools.product(*w_opts):
        for a in itertools.product(*a_opts):
            obj, costs = problem.objective_and_totals(np.array(w), np.array(a))
            if any(
                r.budget is not None and costs[r.name] > (r.budget - r.slack) * (1 + 1e-9) + 1e-300
                for r in problem.resources
            ):
                continue
            key = _key(problem, alike, w, a)
            best[key] = min(best.get(key, np.inf), obj)
    return sorted(best.values())[:k]


def _assert_k_best(problem, search: IlpSearch, k: int) -> None:
    ref = k_best_reference(problem, k)
    got = search.solve(problem)
    if not ref:
        assert got.status is SearchStatus.INFEASIBLE
        return
    assert got.success, got
    objs = [s.objective for s in got.solutions]
    assert len(objs) == len(ref), (objs, ref)
    for o, r in zip(objs, ref, strict=True):
        assert _close(o, r, 1e-7), (objs, ref)
    assert objs == sorted(objs)
    active = [r for r in problem.resources if r.budget is not None]
    alike = set(MilpBuilder(problem, active).alike)
    keys = {_key(problem, alike, s.w_choice, s.a_choice) for s in got.solutions}
    assert len(keys) == len(objs)  # distinct plans
    for s in got.solutions:
        assert s.within(problem, rel_tol=1e-7)
        assert np.all(problem.w_allowed[np.arange(len(s.w_choice)), s.w_choice])
        assert np.all(problem.a_allowed[np.arange(len(s.a_choice)), s.a_choice])


@pytest.mark.parametrize("seed", range(3))
def test_k_best_matches_enumeration(seed):
    rng = np.random.default_rng(3000 + seed)
    for _ in range(8):
        problem = random_problem(rng)
        set_random_budgets(problem, rng)
        k = int(rng.integers(2, 6))
        _assert_k_best(problem, IlpSearch(mip_rel_gap=0.0, n_solutions=k), k)


@pytest.mark.parametrize("counts_above", [0, 10**9])
def test_k_best_per_channel_cuts_on_counts(counts_above):
    """Interchangeable groups: distinct = different option counts, in both formulations."""
    rng = np.random.default_rng(4000 + counts_above % 7)
    for _ in range(8):
        problem = random_problem(rng, per_channel=True, disallow=False)
        set_random_budgets(problem, rng)
        search = IlpSearch(mip_rel_gap=0.0, n_solutions=4, counts_above=counts_above)
        _assert_k_best(problem, search, 4)


def test_k_best_with_plain_highs_too():
    rng = np.random.default_rng(4100)
    for _ in range(5):
        problem = random_problem(rng, overhead=False)
        set_random_budgets(problem, rng)
        _assert_k_best(problem, IlpSearch(mip_rel_gap=0.0, n_solutions=3, method="highs"), 3)


def test_fewer_plans_than_asked_when_few_exist():
    layer = LayerInfo(
        "l0", "conv2d", 4, 1, (1, 1), (1, 1), (0, 0), 1, (4, 4, 4), (1, 4, 4),
        (1, 4, 1, 1), False, 4, 16, "act0", 0,
    )  # fmt: skip
    groups = [WeightGroup("l0", (0, 1), np.array([2.0, 1.0, 0.0]))]
    size = Resource("size", "B", 2.5, weight=np.array([[1.0, 2.0, 3.0]]))
    p = problem_of([layer], (2, 4, 8), (8,), groups, ["act0"], np.zeros((1, 1)), [size])
    res = IlpSearch(n_solutions=5).solve(p)
    assert res.status is SearchStatus.OPTIMAL
    assert [s.objective for s in res.solutions] == [1.0, 2.0]


def _mckp(rng: np.random.Generator, n_layers: int, cout: int, n_res: int):
    """A per-channel multiple-choice knapsack of a realistic shape: losses falling with bits
    over many orders of magnitude, size and BOPs-like linear budgets."""
    w_bits = (2, 3, 4, 5, 6, 8)
    layers, groups = [], []
    for i in range(n_layers):
        ppc = int(rng.choice([72, 144, 288, 576]))
        layers.append(LayerInfo(
            f"l{i}", "conv2d", 4, cout, (1, 1), (1, 1), (0, 0), 1, (4, 4, 4), (cout, 4, 4),
            (cout, ppc, 1, 1), False, ppc * cout, ppc * 64 * cout, "act0", i,
        ))  # fmt: skip
        scale = rng.lognormal(0, 2, cout) * 1e-6
        for c in range(cout):
            loss = scale[c] * 4.0 ** -np.array(w_bits, float) * rng.lognormal(0, 0.3, 6)
            groups.append(WeightGroup(f"l{i}", (c, c + 1), np.sort(loss)[::-1]))
    weight = np.array([[layers[int(g.layer[1:])].params_per_channel * b / 8 for b in w_bits]
                       for g in groups])  # fmt: skip
    size = Resource("size", "B", float(weight[:, 2].sum() * rng.uniform(0.9, 1.2)), weight=weight)
    resources = [size]
    if n_res > 1:
        bops = {
            layer.name: layer.macs_per_channel * np.outer(w_bits, (8,)).astype(float)
            for layer in layers
        }
        total8 = sum(layer.macs * 64 for layer in layers)
        resources.append(Resource("bops", "bit-ops", 0.55 * total8, pair=bops))
    return problem_of(layers, w_bits, (8,), groups, ["act0"], np.zeros((1, 1)), resources)


@pytest.mark.parametrize("seed", range(4))
def test_core_method_proves_the_gap_on_a_mid_size_knapsack(seed):
    """A few hundred groups: the core method's plan is within the gap of plain HiGHS's exact
    optimum, meets its budgets, and reports the gap it proved."""
    rng = np.random.default_rng(5000 + seed)
    problem = _mckp(rng, n_layers=6, cout=40, n_res=1 + seed % 2)
    core = IlpSearch(mip_rel_gap=1e-4).solve(problem)
    exact = IlpSearch(mip_rel_gap=0.0, method="highs").solve(problem)
    assert core.status is exact.status is SearchStatus.OPTIMAL
    assert core.stats["mip_gap"] <= 1e-4
    shift = sum(float(g.loss.min()) for g in problem.weight_groups)
    assert core.objective - shift <= (exact.objective - shift) * (1 + 1.01e-4) + 1e-15
    assert core.objective >= exact.objective - 1e-12
    assert core.best.within(problem)
    if core.stats["method"] != "knapsack":  # the knapsack core MILP proves most of these
        assert core.stats["core_columns"] and core.stats["lp_bound"] >= 0


def test_infeasible_budget_is_reported_by_the_core_method():
    rng = np.random.default_rng(5100)
    problem = _mckp(rng, n_layers=2, cout=2, n_res=1)
    problem.resource("size").budget = 1.0
    res = IlpSearch().solve(problem)
    assert res.status is SearchStatus.INFEASIBLE
    assert BruteForceSearch().solve(problem).status is SearchStatus.INFEASIBLE


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="method"):
        IlpSearch(method="cplex")
    with pytest.raises(ValueError, match="n_solutions"):
        IlpSearch(n_solutions=0)


def separable_problem(rng: np.random.Generator):
    """A random problem whose budgets are separable per group (the knapsack fast path): one
    activation option per group, no roundings or overheads, tiles that may or may not split."""
    problem = random_problem(rng, overhead=False, disallow=bool(rng.random() < 0.5))
    keep = [int(rng.integers(0, len(problem.a_bits)))]
    problem.a_bits = tuple(problem.a_bits[k] for k in keep)
    problem.act_loss = problem.act_loss[:, keep]
    problem.a_allowed = np.ones((len(problem.act_groups), 1), dtype=bool)
    bops = problem.resource("bops")
    bops.pair = {k: v[:, keep] for k, v in bops.pair.items()}
    bops.act = bops.act[:, keep]
    problem.resource("size").round_up = {}
    if rng.random() < 0.5:
        bops.quantum = {name: int(rng.integers(1, 3)) for name in problem.layer_names}
    return problem


@pytest.mark.parametrize("seed", range(3))
def test_knapsack_fast_path_proves_only_true_gaps(seed):
    """Whenever the Lagrangian bound + greedy plan claims a gap, the plan meets the budgets and
    is within that gap of the enumerated optimum, at loose and zero gaps."""
    rng = np.random.default_rng(6000 + seed)
    proven = 0
    for _ in range(25):
        problem = separable_problem(rng)
        set_random_budgets(problem, rng)
        ks = separable_knapsack(problem)
        ref = BruteForceSearch().solve(problem)
        for gap in (0.0, 0.02, 0.3):
            found = None if ks is None else solve_knapsack(ks, gap)
            if found is None:
                continue
            if ref.success:  # the bound and its reduced costs hold for the optimum
                own = np.concatenate([ref.w_choice, ref.a_choice])
                red = found.reduced[np.arange(len(own)), own].sum()
                assert found.bound + red <= ref.objective * (1 + 1e-9) + 1e-12
            if found.plan is None:
                continue
            assert ref.success
            proven += 1
            choice, claimed = found.plan, found.gap
            sol = problem.solution(choice[: ks.n_weight], choice[ks.n_weight :])
            assert sol.within(problem, rel_tol=1e-7)
            shift = float(np.where(np.isfinite(ks.loss), ks.loss, np.inf).min(1).sum())
            assert claimed <= gap
            assert sol.objective - shift <= (ref.objective - shift) / (1 - claimed) + 1e-9
        got = IlpSearch(mip_rel_gap=0.02).solve(problem)
        assert got.success == ref.success
        if ref.success:
            shift = sum(
                float(np.where(a, g.loss, np.inf).min())
                for g, a in zip(problem.weight_groups, problem.w_allowed, strict=True)
            )
            shift += float(np.where(problem.a_allowed, problem.act_loss, np.inf).min(1).sum())
            assert got.objective - shift <= (ref.objective - shift) / 0.98 + 1e-9
            assert got.best.within(problem, rel_tol=1e-7)
    assert proven > 0


def test_knapsack_fast_path_is_used_and_k_best_continues_from_it():
    rng = np.random.default_rng(5200)
    problem = _mckp(rng, n_layers=4, cout=30, n_res=1)
    one = IlpSearch(mip_rel_gap=0.05).solve(problem)
    assert one.stats["method"] == "knapsack" and one.stats["mip_gap"] <= 0.05
    three = IlpSearch(mip_rel_gap=0.05, n_solutions=3).solve(problem)
    assert len(three.solutions) == 3
    assert len({tuple(np.bincount(s.w_choice)) for s in three.solutions}) == 3
    assert all(s.within(problem) for s in three.solutions)


def test_pair_costs_under_several_activation_options_are_not_a_knapsack():
    rng = np.random.default_rng(5300)
    problem = random_problem(rng, overhead=False, disallow=False)
    assert len(problem.a_bits) > 1
    problem.resource("size").round_up = {}
    problem.resource("bops").budget = 1e12
    assert separable_knapsack(problem) is None
    problem.resource("bops").budget = None
    problem.resource("size").budget = 1e12
    assert separable_knapsack(problem) is not None  # size alone is separable


@pytest.mark.parametrize("seed", range(3))
def test_knapsack_core_proves_only_true_gaps(seed):
    """The knapsack core MILP (searches._mckp_core) after the greedy plan: every claimed gap
    holds against enumeration, and it proves gaps the greedy plan alone does not."""
    rng = np.random.default_rng(6100 + seed)
    only_core = 0
    for _ in range(25):
        problem = separable_problem(rng)
        set_random_budgets(problem, rng)
        ks = separable_knapsack(problem)
        if ks is None:
            continue
        ref = BruteForceSearch().solve(problem)
        shift = float(np.where(np.isfinite(ks.loss), ks.loss, np.inf).min(1).sum())
        for gap in (0.0, 1e-4, 0.01):
            found = solve_knapsack(ks, gap, core_time=5.0)
            if found.plan is None:
                continue
            assert ref.success
            only_core += solve_knapsack(ks, gap).plan is None
            sol = problem.solution(found.plan[: ks.n_weight], found.plan[ks.n_weight :])
            assert sol.within(problem, rel_tol=1e-7)
            assert found.gap <= gap
            assert sol.objective - shift <= (ref.objective - shift) / (1 - found.gap) + 1e-9
    assert only_core > 0
