"""The block-configuration search (activation options, kernel classes, tiles, overheads)
against exhaustive search: it may only claim a plan it proves within the gap."""

from __future__ import annotations

import numpy as np
import pytest

from searches import BruteForceSearch, IlpSearch, Resource, SearchProblem, WeightGroup
from searches._blocks import block_problem
from searches._blocks_solve import solve_blocks


def block_case(rng: np.random.Generator) -> SearchProblem:
    """2-3 layers over 1-2 activation groups with 2 options each, whole tiles per group, a size
    resource, and a latency-like resource with kernel classes, tile prices per activation
    option and one overhead per used class; budgets between the extremes."""
    w_bits, a_bits = (2, 4, 8), (4, 8)
    n_layers = int(rng.integers(2, 4))
    n_act = int(rng.integers(1, 3))
    layers = tuple(f"l{i}" for i in range(n_layers))
    acts = [f"a{k}" for k in range(n_act)]
    layer_act = tuple(acts[i % n_act] for i in range(n_layers))
    q = int(rng.integers(1, 3))
    groups, size_rows = [], []
    for name in layers:
        for g in range(int(rng.integers(1, 3))):
            loss = np.sort(rng.random(3))[::-1] * rng.choice([1e-3, 1.0])
            groups.append(WeightGroup(name, (g * q, (g + 1) * q), loss))
            size_rows.append([q * b * float(rng.integers(1, 9)) for b in w_bits])
    cls = (0, 0, 1) if rng.random() < 0.5 else (0, 1, 2)
    pair, overhead, classes, quantum = {}, {}, {}, {}
    for name in layers:
        per_class = np.cumsum(rng.random((max(cls) + 1, 2)), axis=0)
        pair[name] = per_class[list(cls)]
        overhead[name] = np.full(3, float(rng.random() * 2))
        classes[name], quantum[name] = cls, q
    resources = [
        Resource("size", "bytes", None, weight=np.array(size_rows)),
        Resource("latency", "s", None, pair=pair, overhead=overhead, classes=classes,
                 quantum=quantum, act=rng.random((n_act, 2))),
    ]  # fmt: skip
    act_loss = np.sort(rng.random((n_act, 2)), axis=1)[:, ::-1] * rng.choice([1e-3, 1.0])
    problem = SearchProblem(layers, layer_act, w_bits, a_bits, groups, acts, act_loss, resources)
    for r in problem.resources:
        values = []
        for w in np.ndindex(*(3,) * len(groups)):
            for a in np.ndindex(*(2,) * n_act):
                values.append(problem.objective_and_totals(np.array(w), np.array(a))[1][r.name])
        lo, hi = min(values), max(values)
        r.budget = float(rng.uniform(lo - 0.02 * (hi - lo), hi))
    return problem


@pytest.mark.parametrize("seed", range(20))
def test_block_search_matches_brute_force(seed):
    problem = block_case(np.random.default_rng(7000 + seed))
    assert block_problem(problem) is not None
    ref = BruteForceSearch().solve(problem)
    got = IlpSearch(mip_rel_gap=0.0).solve(problem)
    assert got.success == ref.success
    if not ref.success:
        return
    assert got.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)
    sol = problem.solution(got.w_choice, got.a_choice)
    assert sol.within(problem)


@pytest.mark.parametrize("seed", range(20))
def test_block_search_claims_only_true_gaps(seed):
    """At a loose gap the plan may be worse than the optimum, never by more than it claims."""
    problem = block_case(np.random.default_rng(9000 + seed))
    ref = BruteForceSearch().solve(problem)
    bp = block_problem(problem)
    res = solve_blocks(bp, 0.05, 10.0)
    if res.w is None:
        return  # nothing claimed (infeasible, or left to the MILP)
    sol = problem.solution(res.w, res.a)
    assert ref.success and sol.within(problem)
    # Claimed gap is on the loss the search can remove (solver units share the origin).
    removable = (sol.objective - ref.objective) * bp.scale
    assert removable <= res.gap * res.value * (1 + 1e-9) + 1e-9
    assert res.bound <= (ref.objective - bp.shift) * bp.scale * (1 + 1e-9) + 1e-9


def test_block_search_is_used_with_several_activation_options():
    for seed in range(20):
        problem = block_case(np.random.default_rng(7000 + seed))
        got = IlpSearch().solve(problem)
        if got.success and got.stats["method"] == "block configurations":
            assert got.stats["n_configurations"] >= 1
            return
    pytest.fail("the block search never proved a plan")


def test_shared_tiles_are_not_blocks():
    """Two groups of a layer that are not whole tiles share one: the ceil of a sum is not a sum
    of ceils, so the problem is left to the MILP."""
    for seed in range(20):
        problem = block_case(np.random.default_rng(seed))
        first = problem.layer_names[0]
        if sum(g.layer == first for g in problem.weight_groups) < 2:
            continue
        assert block_problem(problem) is not None
        lat = problem.resource("latency")
        lat.quantum = {name: 5 for name in lat.quantum}  # groups of 1-2 channels
        assert block_problem(problem) is None
        return
    pytest.fail("no case with two groups in a layer")
