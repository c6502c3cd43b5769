"""Searches that measure plans, through the CLI on TinyNet: Optuna studies (resume, workers,
refusals), re-ranking of the ILP's best plans, and the pareto sweep."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import invoke_cli as invoke
from conftest import remove_user_env, write_user_env
from test_cli import assert_usage_error, base_args

from hawq_search.plan import Plan

USER_MODULE = "hawq_user_models_cli_search"
MODEL = f"{USER_MODULE}:tiny"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = write_user_env(tmp_path_factory.mktemp("cli_search"), USER_MODULE, 5, 3)
    yield env
    remove_user_env(env, USER_MODULE)


def args(env, out, *extra) -> list:
    a = base_args(env, out, "--heldout-size", 20, *extra)
    a[a.index("--model") + 1] = MODEL
    return a


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def _complete(out, name="hawq-search") -> list:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_optuna_run_measures_resumes_and_refuses_a_silent_restart(env, tmp_path):
    out = tmp_path / "r"
    search = ["--search", "optuna", "--trials", 5, "--budget-mb", 0.0008]
    code, stdout, err = invoke(["run", *args(env, out, *search)])
    assert code == 0, err
    s = _summary(out)["search"]
    assert s["trials_complete"] == 5 and s["objective"] == "measured"
    assert set(s["best_metrics"]) == {"loss", "top1"}
    trials = _complete(out)
    assert trials[0].params and all(v == 1.0 for v in trials[0].params.values())  # ILP first
    assert s["best_value"] == min(t.value for t in trials)
    plan = Plan.load(out / "plan.json")
    assert plan.recompute_totals()["bytes"] <= 800
    assert "Optuna (measured): 5 complete trials" in (out / "report.md").read_text()
    assert "Optuna (measured)" in stdout

    code, _, err = invoke(["run", *args(env, out, *search)])
    assert code == 2 and "pass --resume to continue it" in err, err
    code, _, err = invoke(
        ["run", *args(env, out, *search[:3], 7, "--budget-mb", 0.0008, "--resume")]
    )
    assert code == 0, err
    assert _summary(out)["search"]["trials_complete"] == 7
    numbers = sorted(t.number for t in _complete(out))
    assert numbers[:5] == [t.number for t in trials]  # the first five were kept, not re-run

    # Another budget is another problem: the study refuses it with the difference named.
    code, _, err = invoke(["run", *args(env, out, *search[:4], "--budget-mb", 0.0009, "--resume")])
    assert code == 2 and "was created with" in err, err


def test_two_optuna_workers_share_the_run_study(env, tmp_path):
    out = tmp_path / "w"
    extra = ["--search", "optuna", "--objective", "proxy", "--trials", 12, "--workers", 2,
             "--budget-mb", 0.0008]  # fmt: skip
    code, _, err = invoke(["run", *args(env, out, *extra)])
    assert code == 0, err
    trials = _complete(out)
    assert len(trials) >= 12
    study = optuna.load_study(study_name="hawq-search", storage=f"sqlite:///{out / 'study.db'}")
    joined = [k for k in study.user_attrs if k.startswith("worker:")]
    assert len(joined) == 2  # the main process and its worker both worked on the study


def test_rerank_keeps_the_best_measured_of_the_ilp_plans(env, tmp_path):
    out = tmp_path / "k"
    code, _, err = invoke(["run", *args(env, out, "--rerank", 3, "--budget-mb", 0.0008)])
    assert code == 0, err
    rows = _summary(out)["search"]["rerank"]
    assert 1 <= len(rows) <= 3
    assert [r["loss"] for r in rows] == sorted(r["loss"] for r in rows)
    assert sorted(r["ilp_rank"] for r in rows) == list(range(len(rows)))
    assert "Re-ranking of the ILP's best distinct plans" in (out / "report.md").read_text()


def test_pareto_sweep_writes_plans_json_plot_and_report(env, tmp_path):
    out = tmp_path / "p"
    code, stdout, err = invoke(["pareto", *args(env, out, "--budgets-mb", "0.0006:0.0010:3")])
    assert code == 0, err
    data = json.loads((out / "pareto.json").read_text())
    assert [p["budget"] for p in data["points"]] == [0.0006, 0.0008, 0.001]
    for p in data["points"]:
        plan = Plan.load(out / p["plan"])
        assert plan.recompute_totals()["bytes"] <= p["budget"] * 1e6
        assert abs(p["cost"] - plan.totals["bytes"] / 1e6) < 1e-12
    assert {(u["w_bits"], u["a_bits"]) for u in data["uniform"]} == {(2, 8), (4, 8), (8, 8)}
    assert (out / "pareto.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert all(p["plan"] in report for p in data["points"])
    # Resumed: points already measured are not searched again.
    code, _, err = invoke(["pareto", *args(env, out, "--budgets-mb", "0.0006:0.0010:3")])
    assert code == 0, err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--tradeoff", "size", "--budget-mb", 0.0008], "apply to --search optuna only"),
        (["--workers", 2, "--budget-mb", 0.0008], "apply to --search optuna only"),
        (["--search", "optuna", "--tradeoff", "bops", "--budget-mb", 0.0008], "needs a --bops"),
        (["--search", "optuna", "--rerank", 3, "--budget-mb", 0.0008], "needs --search ilp"),
        (["--search", "optuna", "--trials", 0, "--budget-mb", 0.0008], "--trials must be"),
    ],
)
def test_bad_search_options_exit_2(env, tmp_path, extra, match):
    out = tmp_path / "bad"
    code, _, err = invoke(["run", *args(env, out, *extra)])
    assert_usage_error(code, err, out, match)


def test_pareto_needs_exactly_one_range(env, tmp_path):
    out = tmp_path / "bad"
    code, _, err = invoke(["pareto", *args(env, out)])
    assert_usage_error(code, err, out, "exactly one range")
    code, _, err = invoke(["pareto", *args(env, out, "--budgets-mb", "0.2:x:3")])
    assert_usage_error(code, err, out, "start:stop:count")
