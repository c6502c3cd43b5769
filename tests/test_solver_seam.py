"""The solver seam: a search written here against ``searches.BaseSearch`` runs end to end
through ``hawq-search run``; brute force and the ILP give the same plans through the same
pipeline (re-pricing included); problems round-trip through their file; results give bits by
layer and channel."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import invoke_cli as invoke
from conftest import remove_user_env, tiny_session, write_user_env

from hawq_search.plan import Plan
from searches import (
    BaseSearch,
    BruteForceSearch,
    IlpSearch,
    SearchProblem,
    SearchResult,
    SearchStatus,
)

USER_MODULE = "hawq_user_models_seam"


class GreedySearch(BaseSearch):
    """Start every group at its least lossy option; while over a budget, take the step that
    saves the most of the binding resource per unit of added loss. Feasible, not optimal."""

    name = "greedy-test"

    def solve(self, problem: SearchProblem) -> SearchResult:
        w = np.array(
            [
                int(np.argmin(np.where(a, g.loss, np.inf)))
                for g, a in zip(problem.weight_groups, problem.w_allowed, strict=True)
            ]
        )
        a = np.array([int(np.argmin(np.where(ok, row, np.inf)))
                      for row, ok in zip(problem.act_loss, problem.a_allowed, strict=True)],
                     dtype=int)  # fmt: skip
        while True:
            sol = problem.solution(w, a)
            over = [r for r in problem.resources
                    if r.budget is not None and sol.totals[r.name] > r.budget - r.slack]  # fmt: skip
            if not over:
                return SearchResult(SearchStatus.FEASIBLE, "greedy", (sol,), {"solver": self.name})
            r = over[0]
            best = None
            for k, g in enumerate(problem.weight_groups):
                for i in np.nonzero(problem.w_allowed[k])[0]:
                    if problem.w_bits[i] >= problem.w_bits[w[k]]:
                        continue
                    trial = w.copy()
                    trial[k] = i
                    saved = sol.totals[r.name] - problem.solution(trial, a).totals[r.name]
                    cost = g.loss[i] - g.loss[w[k]] + 1e-30
                    if saved > 0 and (best is None or saved / cost > best[0]):
                        best = (saved / cost, k, i)
            if best is None:
                return SearchResult(SearchStatus.INFEASIBLE, f"cannot meet the {r.name} budget")
            w[best[1]] = best[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = write_user_env(tmp_path_factory.mktemp("seam"), USER_MODULE, 3, 2)
    yield env
    remove_user_env(env, USER_MODULE)


def test_user_search_runs_end_to_end_through_run(env, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = invoke([
        "run", "--model", f"{USER_MODULE}:tiny", "--checkpoint", env["ckpt"],
        "--dataset", "imagefolder", "--data-dir", env["data"], "--calib-size", 20,
        "--eval-size", 20, "--wbits", "2,4,8", "--abits", "8", "--batch-size", 32, "--quiet",
        "--out", out, "--budget-mb", 0.0008, "--search", f"{__name__}:GreedySearch",
    ])  # fmt: skip
    assert code == 0, err
    plan = Plan.load(out / "plan.json")
    assert plan.provenance["solver"] == "greedy-test"
    assert plan.provenance["search"]["search"] == "greedy-test"
    assert plan.totals["bytes"] <= 800
    summary = json.loads((out / "summary.json").read_text())
    assert summary["solver"]["name"] == "greedy-test"


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("nosuchmodule_xyz:Search", "cannot import"),
        (f"{__name__}:invoke", "not a searches.BaseSearch"),
    ],
)
def test_bad_search_is_one_line(env, tmp_path, target, match):
    code, _, err = invoke(["search", "--model", f"{USER_MODULE}:tiny", "--checkpoint",
                           env["ckpt"], "--dataset", "imagefolder", "--data-dir", env["data"],
                           "--out", tmp_path / "o", "--search", target, "--quiet"])  # fmt: skip
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and match in err and "--search" in err


@pytest.mark.parametrize("accelerator", [None, "nvidia_t4", "bitserial_bismo_haq_cloud"])
def test_brute_force_and_ilp_agree_through_the_pipeline(tmp_path, accelerator):
    plans = {}
    for name, search in (("bf", BruteForceSearch()), ("ilp", IlpSearch())):
        s = tiny_session(tmp_path / name, wbits=(2, 4, 8), abits=(4, 8), granularity="layer",
                         accelerator=accelerator, budget_mb=0.0008)  # fmt: skip
        s.searcher = search
        if accelerator:  # a latency budget between the uniform W2A4 and W8A8 plans
            hi = s.uniform_plan().totals["latency_s"]
            lo = s.make_plan({la.name: [2] * la.out_channels for la in s.graph.layers},
                             {g: 4 for g in s.graph.act_groups}).totals["latency_s"]  # fmt: skip
            s.config.latency_ms = (lo + hi) / 2 * 1e3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plans[name], _ = s.search()
    bf, ilp = plans["bf"], plans["ilp"]
    assert ilp.totals["predicted_loss_increase"] == pytest.approx(
        bf.totals["predicted_loss_increase"], rel=1e-6, abs=1e-15
    )
    for plan in (bf, ilp):
        assert plan.totals["bytes"] <= 800
        if accelerator:
            assert plan.totals["latency_s"] <= plan.budgets["latency_s"] * (1 + 1e-9)


def _problem(tmp_path, accelerator=None) -> SearchProblem:
    s = tiny_session(tmp_path, wbits=(2, 3, 4, 8), abits=(4, 8), accelerator=accelerator,
                     budget_mb=0.0008)  # fmt: skip
    return s.problem(s.sensitivity())


def _same(a: SearchProblem, b: SearchProblem) -> None:
    assert (a.layer_names, a.layer_act_groups, a.w_bits, a.a_bits, a.act_groups) == (
        b.layer_names, b.layer_act_groups, b.w_bits, b.a_bits, b.act_groups)  # fmt: skip
    assert [(g.layer, g.channels) for g in a.weight_groups] == [
        (g.layer, g.channels) for g in b.weight_groups]  # fmt: skip
    assert np.array_equal([g.loss for g in a.weight_groups], [g.loss for g in b.weight_groups])
    assert np.array_equal(a.act_loss, b.act_loss)
    assert np.array_equal(a.w_allowed, b.w_allowed) and np.array_equal(a.a_allowed, b.a_allowed)
    assert a.meta == b.meta
    for ra, rb in zip(a.resources, b.resources, strict=True):
        for attr in ("name", "unit", "budget", "constant", "slack", "round_reserve", "quantum",
                     "classes"):  # fmt: skip
            assert getattr(ra, attr) == getattr(rb, attr), attr
        for attr in ("weight", "act"):
            x, y = getattr(ra, attr), getattr(rb, attr)
            assert (x is None) == (y is None) and (x is None or np.array_equal(x, y)), attr
        for attr in ("pair", "overhead", "round_up"):
            x, y = getattr(ra, attr), getattr(rb, attr)
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), attr


@pytest.mark.parametrize("accelerator", [None, "nvidia_t4"])
def test_problem_file_round_trip(tmp_path, accelerator):
    problem = _problem(tmp_path / "p", accelerator)
    path = tmp_path / "problem.npz"
    problem.save(path)
    loaded = SearchProblem.load(path)
    _same(problem, loaded)
    a, b = IlpSearch().solve(problem), IlpSearch().solve(loaded)
    assert np.array_equal(a.w_choice, b.w_choice) and np.array_equal(a.a_choice, b.a_choice)
    assert a.costs == b.costs


def test_problem_file_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a problem file"):
        SearchProblem.load(bad)
    (tmp_path / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a problem file"):
        SearchProblem.load(tmp_path / "y.npz")


def test_result_gives_bits_by_layer_and_channel(tmp_path):
    problem = _problem(tmp_path)
    result = IlpSearch().solve(problem)
    best = result.best
    assert result.solutions[0] is best and best.within(problem)
    for name in problem.layer_names:
        groups = problem.groups_of(name)
        channels = sum(problem.weight_groups[k].count for k in groups)
        assert len(best.layer_bits[name]) == channels
        for k in groups:
            start, stop = problem.weight_groups[k].channels
            assert set(best.layer_bits[name][start:stop]) == {problem.w_bits[best.w_choice[k]]}
    assert best.act_bits == {
        g: problem.a_bits[j] for g, j in zip(problem.act_groups, best.a_choice, strict=True)
    }
