"""OptunaSearch: within budgets by construction, no worse than the ILP on the proxy, better where
measurement disagrees with the proxy, and studies that survive kill -9 and are shared by workers
(SQLite here; PostgreSQL where ``HAWQ_SEARCH_TEST_POSTGRES`` names a server, as .ci/run does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from test_ilp import random_problem, set_random_budgets

from hawq_search.core.exceptions import UserInputError
from searches import IlpSearch, SearchStatus
from searches.optuna_search import OptunaSearch, StudyMismatchError

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]


def _feasible_problem(seed: int, per_channel: bool = True):
    rng = np.random.default_rng(seed)
    p = random_problem(rng, per_channel=per_channel)
    set_random_budgets(p, rng)
    return p, rng


def _within(problem, solution) -> bool:
    return all(
        r.budget is None
        or solution.totals[r.name] <= (r.budget - r.slack) + 1e-7 * max(1.0, abs(r.budget))
        for r in problem.resources
    )


@pytest.mark.parametrize("seed", [2, 3, 6, 8])
def test_proxy_search_is_within_two_percent_of_the_ilp_and_never_below_it(seed):
    p, _ = _feasible_problem(seed)
    exact = IlpSearch(mip_rel_gap=0.0).solve(p)
    res = OptunaSearch(15, seed=seed).solve(p)
    assert res.success and res.stats["trials_complete"] == 15
    assert exact.objective - 1e-9 * abs(exact.objective) <= res.objective
    assert res.objective <= exact.objective * 1.02 + 1e-12
    assert _within(p, res.best)


@pytest.mark.parametrize("seed", [23, 27])
def test_measured_objective_corrects_a_wrong_proxy(seed):
    """The 'measurement' is the proxy with per-layer errors; the search must reach the optimum
    of the true objective (which the plain ILP on the proxy misses) within 40 trials."""
    p, rng = _feasible_problem(seed)
    f = {n: float(np.exp(rng.uniform(-1.5, 1.5))) for n in p.layer_names}
    g = {a: float(np.exp(rng.uniform(-1.5, 1.5))) for a in p.act_groups}
    true = p.rescaled(f, g)
    best_true = IlpSearch(mip_rel_gap=0.0).solve(true).objective
    plain = IlpSearch().solve(p)
    plain_true = true.objective_and_totals(plain.w_choice, plain.a_choice)[0]
    assert plain_true > best_true * 1.005  # the proxy misleads the ILP here

    def measure(sol):
        return {"loss": true.objective_and_totals(sol.w_choice, sol.a_choice)[0], "top1": 1.0}

    res = OptunaSearch(40, measure=measure, seed=seed).solve(p)
    assert res.stats["best_value"] <= best_true * 1.02
    assert res.stats["best_metrics"]["top1"] == 1.0
    assert _within(p, res.best)


@pytest.mark.parametrize("seed", range(8))
def test_no_reported_plan_violates_a_budget(seed):
    p, _ = _feasible_problem(seed, per_channel=bool(seed % 2))
    if not IlpSearch().solve(p).success:
        res = OptunaSearch(5, seed=seed).solve(p)
        assert res.status is SearchStatus.INFEASIBLE and not res.solutions
        return
    budgeted = [r.name for r in p.resources if r.budget is not None]
    tradeoff = budgeted[seed % len(budgeted)]
    for search in (
        OptunaSearch(10, seed=seed, sampler="random"),
        OptunaSearch(12, seed=seed, tradeoff=tradeoff, sampler=("tpe", "nsga2")[seed % 2]),
    ):
        res = search.solve(p)
        assert res.success
        assert all(_within(p, s) for s in res.solutions)
        if search.tradeoff:  # a Pareto set: no member dominates another
            pts = [(s.objective, s.totals[tradeoff]) for s in res.solutions]
            for a in pts:
                assert not any(b[0] < a[0] and b[1] < a[1] for b in pts)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserInputError, match="n_trials"):
        OptunaSearch(0)
    with pytest.raises(UserInputError, match="sampler"):
        OptunaSearch(5, sampler="cmaes")
    p, _ = _feasible_problem(2)
    with pytest.raises(UserInputError, match="tradeoff"):
        OptunaSearch(5, tradeoff="nonexistent").solve(p)
    with pytest.raises(UserInputError, match="storage"):
        OptunaSearch(5, storage="nosuchdb://x").solve(p)


def test_a_study_refuses_another_problem_or_other_settings(tmp_path):
    p, _ = _feasible_problem(3)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    OptunaSearch(3, storage=url, study_attrs={"model": "resnet20"}).solve(p)
    with pytest.raises(UserInputError, match="already has 3 finished trials: pass if_exists"):
        OptunaSearch(3, storage=url, study_attrs={"model": "resnet20"}).solve(p)
    with pytest.raises(StudyMismatchError, match="model='resnet20'.*model='resnet56'"):
        OptunaSearch(3, storage=url, if_exists="join", study_attrs={"model": "resnet56"}).solve(p)
    other = p.with_budgets({p.resources[0].name: (p.resources[0].budget or 1.0) * 2})
    with pytest.raises(StudyMismatchError, match="problem="):
        OptunaSearch(3, storage=url, if_exists="join", study_attrs={"model": "resnet20"}).solve(
            other
        )
    res = OptunaSearch(5, storage=url, if_exists="join", study_attrs={"model": "resnet20"})
    assert res.solve(p).stats["trials_complete"] == 5  # resumed: 2 more trials


# ---- processes sharing a study -------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, time, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from searches import SearchProblem
    from searches.optuna_search import OptunaSearch
    problem = SearchProblem.load(sys.argv[1])
    def measure(sol):
        time.sleep(float(sys.argv[4]))
        return {"loss": sol.objective}
    res = OptunaSearch(int(sys.argv[3]), measure=measure, storage=sys.argv[2], seed=None,
                       if_exists="join", study_name="shared").solve(problem)
    print("done", res.stats["trials_complete"], flush=True)
    """
)


def _worker(problem_file, url, n_trials, sleep_s) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(problem_file), url, str(n_trials), str(sleep_s)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="shared", storage=url)


def _complete(study: optuna.Study) -> dict[int, float]:
    states = (optuna.trial.TrialState.COMPLETE,)
    return {t.number: t.value for t in study.get_trials(deepcopy=False, states=states)}


def _two_workers_share(url: str, tmp_path: Path) -> None:
    p, _ = _feasible_problem(6)
    p.save(tmp_path / "problem.npz")
    procs = [_worker(tmp_path / "problem.npz", url, 16, 0.05) for _ in range(2)]
    outs = [proc.communicate(timeout=240) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [o[1][-800:] for o in outs]
    trials = _study(url).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 16 <= len(trials) <= 17  # the last running trial of the slower worker may finish
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both contributed


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    _two_workers_share(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)


def test_two_workers_share_one_postgresql_study(tmp_path):
    url = os.environ.get("HAWQ_SEARCH_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: set HAWQ_SEARCH_TEST_POSTGRES (.ci/run starts one)")
    name = f"hawq_test_{os.getpid()}_{int(time.time())}"
    _create_database(url, name)
    _two_workers_share(url.rsplit("/", 1)[0] + f"/{name}", tmp_path)


def _create_database(url: str, name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def test_a_study_killed_with_sigkill_resumes_without_losing_finished_trials(tmp_path):
    p, _ = _feasible_problem(8)
    p.save(tmp_path / "problem.npz")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _worker(tmp_path / "problem.npz", url, 1000, 0.3)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if len(_complete(_study(url))) >= 4:
                break
        except KeyError:  # the study does not exist yet
            continue
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = _complete(_study(url))
    assert len(before) >= 4
    res = OptunaSearch(
        len(before) + 3, measure=lambda sol: {"loss": sol.objective}, storage=url,
        study_name="shared", if_exists="join", seed=None,
    )  # fmt: skip
    out = res.solve(p)
    after = _complete(_study(url))
    assert all(after[k] == v for k, v in before.items())  # nothing lost or re-run
    assert out.stats["trials_complete"] == len(before) + 3


def test_a_plan_is_measured_once_however_many_trials_give_it(tmp_path):
    p, _ = _feasible_problem(3)
    calls = []

    def measure(sol):
        calls.append((tuple(sol.w_choice), tuple(sol.a_choice)))
        return {"loss": sol.objective}

    url = f"sqlite:///{tmp_path / 'study.db'}"
    res = OptunaSearch(12, measure=measure, storage=url, seed=0).solve(p)
    assert res.stats["trials_complete"] == 12
    assert len(calls) == len(set(calls))  # no plan measured twice in this process
    again = OptunaSearch(16, measure=measure, storage=url, seed=1, if_exists="join")
    again.solve(p)
    assert len(calls) == len(set(calls))  # nor by a resumed search: the study has them
