"""The exact ILP (HiGHS) against exhaustive search on many small random problems."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hawq_search.core.layers import LayerInfo
from searches import (
    BruteForceSearch,
    IlpSearch,
    Resource,
    SearchProblem,
    SearchStatus,
    WeightGroup,
    resource_range,
)
from searches._milp_model import MilpBuilder
from searches._milp_solve import Model, lp_relaxation, solve_plain


def _layer(name: str, cout: int, ppc: int, mpc: int, group: str, index: int) -> LayerInfo:
    return LayerInfo(
        name, "conv2d", 4, cout, (1, 1), (1, 1), (0, 0), 1, (4, 4, 4), (cout, 4, 4),
        (cout, ppc, 1, 1), False, ppc * cout, mpc * cout, group, index,
    )  # fmt: skip


def random_problem(
    rng: np.random.Generator,
    *,
    overhead: bool = True,
    disallow: bool = True,
    offset: float = 0.0,
    loss_scale: float = 1.0,
    per_channel: bool = False,
) -> SearchProblem:
    """2-4 weight groups over 1-3 layers, 2-3 activation groups, 2-3 bit options each, a size
    resource (per group, some layers rounded up to whole bytes), a BOPs-like pair resource, an
    overhead resource and a tiled latency-like resource whose weight options share kernel
    classes; no budgets yet."""
    n_act = int(rng.integers(2, 4))
    n_layers = int(rng.integers(max(1, n_act - 1), 4))
    w_bits = tuple(sorted(rng.choice([2, 3, 4, 6, 8, 16], int(rng.integers(2, 4)), replace=False)))
    a_bits = tuple(sorted(rng.choice([4, 6, 8, 32], int(rng.integers(2, 4)), replace=False)))
    act_groups = [f"act{k}" for k in range(n_act)]
    layers, groups = [], []
    n_groups = int(rng.integers(max(2, n_layers), 5))
    for i in range(n_layers):
        cout = int(rng.integers(1, 3 if per_channel else 5))
        layers.append(
            _layer(f"l{i}", cout, int(rng.integers(1, 30)), int(rng.integers(1, 200)),
                   act_groups[i % n_act], i)
        )  # fmt: skip
    # Split channels into groups until there are n_groups (each layer at least one group).
    per_layer = [1] * n_layers
    for _ in range(n_groups - n_layers):
        per_layer[int(rng.integers(0, n_layers))] += 1
    if per_channel:  # one group per channel: interchangeable groups (counts formulation)
        per_layer = [layer.out_channels for layer in layers]
    for layer, k in zip(layers, per_layer, strict=True):
        k = min(k, layer.out_channels)
        cuts = np.linspace(0, layer.out_channels, k + 1).astype(int)
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            loss = np.sort(rng.random(len(w_bits)))[::-1] * rng.choice([1e-3, 1.0, 30.0])
            groups.append(WeightGroup(layer.name, (int(start), int(stop)),
                                      (loss + offset) * loss_scale))  # fmt: skip
    used_groups = sorted({layer.act_group for layer in layers}, key=act_groups.index)
    act_loss = np.sort(rng.random((len(used_groups), len(a_bits))), axis=1)[:, ::-1] + offset
    act_loss = act_loss * rng.choice([1e-3, 1.0]) * loss_scale
    size = Resource(
        "size",
        "bytes",
        None,
        weight=np.array(
            [
                [
                    g.count * (layers[int(g.layer[1:])].params_per_channel * b / 8 + 8)
                    for b in w_bits
                ]
                for g in groups
            ]
        ),  # fmt: skip
        slack=float(rng.choice([0.0, len(layers)])),
        round_up={
            layer.name: layer.params_per_channel * np.array(w_bits, float) / 8
            for layer in layers
            if rng.random() < 0.5
        },
    )
    bops = Resource(
        "bops",
        "bit-ops",
        None,
        pair={
            layer.name: layer.macs_per_channel * np.outer(w_bits, a_bits).astype(float)
            for layer in layers
        },
        act=rng.random((len(used_groups), len(a_bits))) * 50,
        constant=float(rng.random() * 100),
    )
    resources = [size, bops]
    if overhead:
        resources.append(
            Resource(
                "launches",
                "us",
                None,
                overhead={layer.name: rng.random(len(w_bits)) * 20 for layer in layers},
                weight=None if per_channel else rng.random((len(groups), len(w_bits))),
            )
        )
    if overhead:
        resources.append(_tiled_resource(layers, w_bits, a_bits, rng))
    w_allowed = a_allowed = None
    if disallow:
        w_allowed = rng.random((len(groups), len(w_bits))) > 0.25
        w_allowed[np.arange(len(groups)), rng.integers(0, len(w_bits), len(groups))] = True
        a_allowed = rng.random((len(used_groups), len(a_bits))) > 0.25
        a_allowed[np.arange(len(used_groups)), rng.integers(0, len(a_bits), len(used_groups))] = (
            True
        )
    return problem_of(
        layers, w_bits, a_bits, groups, used_groups, act_loss, resources, w_allowed, a_allowed
    )


def _tiled_resource(layers, w_bits, a_bits, rng: np.random.Generator) -> Resource:
    """Costs per tile of 1-3 channels, options merged into random kernel classes (equal costs
    within a class, non-decreasing over classes) with one overhead per used class."""
    pair, overhead, classes, quantum = {}, {}, {}, {}
    for layer in layers:
        cls = [0]
        for _ in w_bits[1:]:
            cls.append(cls[-1] + int(rng.random() < 0.5))
        per_class = np.cumsum(rng.random((cls[-1] + 1, len(a_bits))), axis=0)
        pair[layer.name] = per_class[cls]
        overhead[layer.name] = np.full(len(w_bits), float(rng.random() * 3))
        classes[layer.name] = tuple(cls)
        quantum[layer.name] = int(rng.integers(1, 4))
    return Resource(
        "tiles", "s", None, pair=pair, overhead=overhead, classes=classes, quantum=quantum
    )


def problem_of(layers, *args, **kwargs) -> SearchProblem:
    """A problem over ``layers`` (LayerInfo), as the builder makes one: names and groups only."""
    return SearchProblem(
        tuple(layer.name for layer in layers), tuple(layer.act_group for layer in layers),
        *args, **kwargs,
    )  # fmt: skip


def all_costs(problem: SearchProblem) -> list[tuple[float, dict[str, float]]]:
    """Objective and costs of every allowed plan, enumerated independently of the solvers."""
    w_opts = [np.nonzero(r)[0] for r in problem.w_allowed]
    a_opts = [np.nonzero(r)[0] for r in problem.a_allowed]
    return [
        problem.objective_and_totals(np.array(w), np.array(a))
        for w in itertools.product(*w_opts)
        for a in itertools.product(*a_opts)
    ]


def set_random_budgets(problem: SearchProblem, rng: np.random.Generator) -> None:
    plans = all_costs(problem)
    for r in problem.resources:
        if rng.random() < 0.3:
            continue  # unbudgeted: reported only
        values = np.array([c[r.name] for _, c in plans]) - r.slack
        lo, hi = values.min(), values.max()
        # Mostly between the extremes; sometimes below the minimum (infeasible).
        r.budget = float(rng.uniform(lo - 0.05 * (hi - lo) - 1e-3, hi + 0.02 * (hi - lo))) + r.slack


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# The formulation is checked with a zero MIP gap (then it must be exact); the default solver is
# checked against its documented relative gap.
EXACT = IlpSearch(mip_rel_gap=0.0)
DEFAULT = IlpSearch()
# The core method on the one-hot formulation (no integer counts), and plain HiGHS on it.
LARGE_PATH = IlpSearch(mip_rel_gap=0.0, counts_above=10**9)
PLAIN = IlpSearch(mip_rel_gap=0.0, method="highs")


def _check_against_brute_force(problem: SearchProblem) -> SearchStatus:
    ref = BruteForceSearch().solve(problem)
    got = EXACT.solve(problem)
    default = DEFAULT.solve(problem)
    large = LARGE_PATH.solve(problem)
    plain = PLAIN.solve(problem)
    assert got.success == ref.success == default.success == large.success == plain.success
    if ref.success:
        for other in (large, plain):
            assert _close(other.objective, ref.objective, rel=1e-7), (other.objective, ref)
            _assert_within_budgets(problem, other)
    if not ref.success:
        assert got.status is default.status is SearchStatus.INFEASIBLE
        return got.status
    assert got.status is SearchStatus.OPTIMAL
    assert _close(got.objective, ref.objective), (got.objective, ref.objective)
    assert default.objective >= ref.objective - 1e-12 * abs(ref.objective)
    assert default.objective <= ref.objective + DEFAULT.mip_rel_gap * abs(ref.objective) * 1.01
    # The solver's plan is allowed and meets every budget when recomputed directly.
    assert np.all(problem.w_allowed[np.arange(len(got.w_choice)), got.w_choice])
    assert np.all(problem.a_allowed[np.arange(len(got.a_choice)), got.a_choice])
    obj, costs = problem.objective_and_totals(got.w_choice, got.a_choice)
    assert _close(obj, got.objective)
    for r in problem.resources:
        assert _close(costs[r.name], got.costs[r.name])
    _assert_within_budgets(problem, got)
    return got.status


def _assert_within_budgets(problem: SearchProblem, result) -> None:
    """Every budget holds for the result's plan, recomputed directly by ``evaluate``."""
    _, costs = problem.objective_and_totals(result.w_choice, result.a_choice)
    for r in problem.resources:
        if r.budget is not None:
            assert costs[r.name] <= r.budget - r.slack + 1e-7 * max(1.0, abs(r.budget)), r.name


@pytest.mark.parametrize("seed", range(6))
def test_ilp_equals_brute_force(seed):
    rng = np.random.default_rng(1000 + seed)
    statuses = []
    for _ in range(25):
        problem = random_problem(rng)
        set_random_budgets(problem, rng)
        statuses.append(_check_against_brute_force(problem))
    # The random budgets exercise both outcomes.
    assert SearchStatus.OPTIMAL in statuses


@pytest.mark.parametrize("seed", range(3))
def test_ilp_equals_brute_force_per_channel(seed):
    """One group per channel: interchangeable groups, which the core method solves with integer
    option counts and continuous assignments (and ``LARGE_PATH`` with binaries)."""
    rng = np.random.default_rng(2000 + seed)
    statuses = []
    for _ in range(20):
        problem = random_problem(rng, per_channel=True, disallow=False)
        set_random_budgets(problem, rng)
        statuses.append(_check_against_brute_force(problem))
    assert SearchStatus.OPTIMAL in statuses


def test_counts_formulation_is_used_for_interchangeable_groups():
    rng = np.random.default_rng(5)
    problem = random_problem(rng, per_channel=True, disallow=False)
    multi = [n for n in problem.layer_names if len(problem.groups_of(n)) > 1]
    assert multi, "the generator should give a layer with several channels"
    builder = MilpBuilder(problem, problem.resources)
    assert set(builder.m0) == set(multi)


def test_ilp_equals_brute_force_without_overheads_and_with_offsets():
    rng = np.random.default_rng(7)
    n_infeasible = 0
    for _ in range(60):
        problem = random_problem(rng, overhead=False, disallow=bool(rng.random() < 0.5),
                                 offset=float(rng.choice([0.0, 5.0])))  # fmt: skip
        set_random_budgets(problem, rng)
        n_infeasible += _check_against_brute_force(problem) is SearchStatus.INFEASIBLE
    assert 0 < n_infeasible < 60


def test_single_activation_option_is_linear_in_weights():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = random_problem(rng, overhead=False)
        keep = [0]
        p.a_bits = tuple(p.a_bits[k] for k in keep)
        p.act_loss = p.act_loss[:, keep]
        p.a_allowed = np.ones((len(p.act_groups), 1), dtype=bool)
        bops = p.resource("bops")
        bops.pair = {k: v[:, keep] for k, v in bops.pair.items()}
        bops.act = bops.act[:, keep]
        set_random_budgets(p, rng)
        _check_against_brute_force(p)


def test_infeasible_size_budget_names_the_budget_and_minimum():
    rng = np.random.default_rng(11)
    problem = random_problem(rng, overhead=False, disallow=False)
    lo, _ = resource_range(problem, "size")
    size = problem.resource("size")
    size.budget = lo + size.slack - 1.0
    result = IlpSearch().solve(problem)
    assert result.status is SearchStatus.INFEASIBLE
    assert not result.success
    assert "size budget" in result.message
    assert f"{lo:.6g}" in result.message
    assert "bops" not in result.message
    assert BruteForceSearch().solve(problem).status is SearchStatus.INFEASIBLE


def test_budgets_feasible_alone_but_not_together():
    # Two layers, two options: small-size options have high BOPs and vice versa.
    layers = [_layer("a", 1, 10, 10, "g", 0), _layer("b", 1, 10, 10, "g", 1)]
    groups = [WeightGroup("a", (0, 1), np.array([1.0, 0.0])),
              WeightGroup("b", (0, 1), np.array([1.0, 0.0]))]  # fmt: skip
    size = Resource("size", "B", 2.5, weight=np.array([[1.0, 2.0], [1.0, 2.0]]))
    speed = Resource("lat", "s", 2.5, weight=np.array([[2.0, 1.0], [2.0, 1.0]]))
    p = problem_of(layers, (2, 8), (8,), groups, ["g"], np.zeros((1, 1)), [size, speed])
    result = IlpSearch().solve(p)
    assert result.status is SearchStatus.INFEASIBLE
    assert "not together" in result.message
    assert BruteForceSearch().solve(p).status is SearchStatus.INFEASIBLE


def test_infeasible_bops_budget_names_bops():
    rng = np.random.default_rng(5)
    problem = random_problem(rng, overhead=False, disallow=False)
    lo, _ = resource_range(problem, "bops")
    problem.resource("bops").budget = lo * 0.5
    result = IlpSearch().solve(problem)
    assert result.status is SearchStatus.INFEASIBLE
    assert result.message.startswith("bops budget")


@pytest.mark.parametrize("seed", range(3))
def test_resource_range_matches_brute_force(seed):
    rng = np.random.default_rng(500 + seed)
    for _ in range(15):
        problem = random_problem(rng, overhead=False)
        plans = all_costs(problem)
        for r in problem.resources:
            values = [c[r.name] for _, c in plans]
            lo, hi = resource_range(problem, r.name)
            assert _close(lo, min(values), 1e-9), (r.name, lo, min(values))
            assert _close(hi, max(values), 1e-9), (r.name, hi, max(values))


def test_resource_range_minimum_with_overheads_matches_brute_force():
    rng = np.random.default_rng(77)
    for _ in range(20):
        problem = random_problem(rng)
        values = [c["launches"] for _, c in all_costs(problem)]
        lo, _ = resource_range(problem, "launches")
        assert _close(lo, min(values), 1e-9)


def test_resource_range_maximum_with_overheads_matches_brute_force():
    rng = np.random.default_rng(77)
    for _ in range(20):
        problem = random_problem(rng)
        values = [c["launches"] for _, c in all_costs(problem)]
        _, hi = resource_range(problem, "launches")
        assert _close(hi, max(values), 1e-9), (hi, max(values))


@pytest.mark.parametrize("seed", range(3))
def test_objective_scaling_does_not_change_the_argmin(seed):
    """Sensitivities are ~1e-12..1e-3: scaling all losses must not change the chosen plan."""
    for k in range(10):
        rng = np.random.default_rng(900 + 10 * seed + k)
        problem = random_problem(rng, overhead=False, disallow=False)
        set_random_budgets(problem, rng)
        for r in problem.resources:
            if r.budget is not None and r.budget - r.slack < min(
                c[r.name] for _, c in all_costs(problem)
            ):
                r.budget = None  # keep it feasible
        rng2 = np.random.default_rng(900 + 10 * seed + k)
        tiny = random_problem(rng2, overhead=False, disallow=False, loss_scale=1e-12)
        for r, rt in zip(problem.resources, tiny.resources, strict=True):
            rt.budget = r.budget
        ref = EXACT.solve(problem)
        got = EXACT.solve(tiny)
        bf = BruteForceSearch().solve(problem)
        if not bf.success:  # the budgets cannot be met together
            assert ref.status is got.status is SearchStatus.INFEASIBLE
            continue
        assert ref.success and got.success
        assert _close(ref.objective, bf.objective)
        assert _close(got.objective * 1e12, bf.objective, 1e-6)
        assert _close(got.objective * 1e12, ref.objective, 1e-6)
        assert np.array_equal(got.w_choice, ref.w_choice)
        assert np.array_equal(got.a_choice, ref.a_choice)
        assert got.stats["objective_scale"] == pytest.approx(ref.stats["objective_scale"] * 1e12)


def test_all_zero_losses_are_solved():
    rng = np.random.default_rng(2)
    problem = random_problem(rng, overhead=False, loss_scale=0.0)
    result = IlpSearch().solve(problem)
    assert result.status is SearchStatus.OPTIMAL and result.objective == 0.0


def _offset_problem(base: float) -> SearchProblem:
    rng = np.random.default_rng(4)
    w_bits = (2, 3, 4, 8)
    layers = [_layer(f"l{i}", 1, int(rng.integers(5, 50)), 1, "a", i) for i in range(60)]
    groups = [
        WeightGroup(layer.name, (0, 1), base + np.sort(rng.random(4))[::-1] * rng.random())
        for layer in layers
    ]
    cost = np.array([[layer.params_per_channel * b / 8 for b in w_bits] for layer in layers])
    budget = float(rng.uniform(cost.min(1).sum(), cost.max(1).sum()))
    size = Resource("size", "bytes", budget, weight=cost)
    return problem_of(layers, w_bits, (8,), groups, ["a"], np.zeros((1, 1)), [size])


def test_constant_loss_offset_does_not_change_the_plan():
    plain = IlpSearch().solve(_offset_problem(0.0))
    shifted = IlpSearch().solve(_offset_problem(1e3))
    assert plain.success and shifted.success
    assert _close(shifted.objective - 60 * 1e3, plain.objective, 1e-6)


def test_brute_force_is_exact_at_tiny_loss_scales():
    for k in range(10):
        rng = np.random.default_rng(900 + k)
        problem = random_problem(rng, overhead=False, disallow=False)
        tiny = random_problem(np.random.default_rng(900 + k), overhead=False, disallow=False,
                              loss_scale=1e-12)  # fmt: skip
        ref = BruteForceSearch().solve(problem)
        got = BruteForceSearch().solve(tiny)
        assert _close(got.objective * 1e12, ref.objective, 1e-6)


@pytest.mark.parametrize("ppcs", [(3, 8), (3, 9, 16)])
def test_linear_byte_reserve_matches_exact_rounding(ppcs):
    """Size with per-layer byte rounding: the linear solve with ``round_reserve`` (exact for one
    rounded layer, conservative then exact by integers for several) equals brute force."""
    from hawq_search.problem_builder import _byte_reserve

    rng = np.random.default_rng(len(ppcs))
    w_bits, a_bits = (2, 3, 4, 8), (8,)
    layers = [_layer(f"l{i}", 2, ppc, 10, "act0", i) for i, ppc in enumerate(ppcs)]
    groups = [
        WeightGroup(layer.name, (c, c + 1), np.sort(rng.random(len(w_bits)))[::-1])
        for layer in layers
        for c in range(layer.out_channels)
    ]
    weight = np.array([[layers[int(g.layer[1:])].params_per_channel * b / 8 + 8 for b in w_bits]
                       for g in groups])  # fmt: skip
    round_up = {
        layer.name: layer.params_per_channel * np.array(w_bits, float) / 8
        for layer in layers
        if layer.params_per_channel % 8
    }
    sizes = []
    for budget_seed in range(12):
        problem = problem_of(layers, w_bits, a_bits, groups, ["act0"], np.zeros((1, 1)), [
            Resource("size", "bytes", None, weight=weight, round_up=round_up)])  # fmt: skip
        if not sizes:
            sizes = sorted({c["size"] for _, c in all_costs(problem)})
        budget = float(sizes[budget_seed * (len(sizes) - 1) // 11]) + float(rng.choice([0, 0.5]))
        size = problem.resource("size")
        size.budget, size.round_reserve = budget, _byte_reserve(budget, len(round_up))
        ref = BruteForceSearch().solve(problem)
        got = EXACT.solve(problem)
        assert got.success == ref.success
        if ref.success:
            assert _close(got.objective, ref.objective, rel=1e-7)
            _assert_within_budgets(problem, got)


def _lp_bounds_and_optimum(problem: SearchProblem):
    """LP bounds without and with the unit-range rows, the optimum plan's x, and the model."""
    active = [r for r in problem.resources if r.budget is not None]
    b = MilpBuilder(problem, active, counts=False)
    b.structural_rows()
    c, scale = b.objective()
    extra = [(b.resource_coefficients(r), r.limit) for r in active]
    bounds, integrality = b.bounds_and_integrality()
    model = Model.of(c * scale, bounds, integrality, b.constraint(extra), b.cut_rows)
    best = solve_plain(model, 0.0, 10.0)  # HiGHS on the model without the cut rows
    lp_cut, lp_plain = lp_relaxation(model, 10.0), lp_relaxation(model.without_cuts(), 10.0)
    return lp_plain, lp_cut, best, model


@pytest.mark.parametrize("seed", range(3))
def test_unit_range_rows_hold_for_the_optimum_and_only_raise_the_lp_bound(seed):
    """The rows ``lo y <= sum_c u[c, j] <= hi y`` are valid: the optimal plan satisfies them,
    and the LP bound with them lies between the plain LP bound and the optimum."""
    rng = np.random.default_rng(3000 + seed)
    raised = 0
    for _ in range(20):
        problem = random_problem(rng, per_channel=bool(rng.random() < 0.5), disallow=False)
        set_random_budgets(problem, rng)
        lp_plain, lp_cut, best, model = _lp_bounds_and_optimum(problem)
        if best.x is None or not model.cuts.any():  # infeasible, or no pair cost budgeted
            continue
        ax = model.a[model.cuts] @ best.x
        assert np.all(ax >= model.row_lo[model.cuts] - 1e-7)
        assert np.all(ax <= model.row_hi[model.cuts] + 1e-7)
        tol = 1e-7 * max(1.0, abs(best.fun))
        assert lp_plain.fun - tol <= lp_cut.fun <= best.fun + tol
        raised += lp_cut.fun > lp_plain.fun + tol
    assert raised > 0, "the rows should tighten some LP relaxation"
