"""The command line, in process: bad input gives exit 2 with one line on stderr and writes
nothing; `run`, `search`, `evaluate`, `sensitivity` and `models` work end to end on TinyNet (a
user model file) and a tiny ImageFolder data set written to a temporary directory."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import invoke_cli as invoke
from conftest import remove_user_env, write_user_env

from hawq_search.models.cifar_resnet import cifar_resnet
from hawq_search.plan import Plan

USER_MODULE = "hawq_user_models_cli"
MODEL = f"{USER_MODULE}:tiny"
CLASSES = [f"class{k}" for k in range(10)]
# TinyNet stores 720 weights in 42 output channels: at 2 bits 180 B + 42 * (4 B scale + 4 B
# bias) = 516 B; at 4 bits 696 B; at 8 bits 1056 B.
SMALLEST_BYTES = 516
LARGEST_BYTES = 1056


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A user model module, its checkpoint and an ImageFolder data set of 16x16 PNGs."""
    env = write_user_env(tmp_path_factory.mktemp("cli"), USER_MODULE, 4, 3)
    yield env
    remove_user_env(env, USER_MODULE)


def base_args(env, out, *extra) -> list:
    return [
        "--model", MODEL, "--checkpoint", env["ckpt"], "--dataset", "imagefolder",
        "--data-dir", env["data"], "--calib-size", 24, "--eval-size", 20, "--wbits", "2,4,8",
        "--abits", "8", "--batch-size", 32, "--quiet", "--out", out, *extra,
    ]  # fmt: skip


def assert_usage_error(code: int, err: str, out_dir, match: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    assert not out_dir.exists() or sorted(p.name for p in out_dir.iterdir()) == []


# ---- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    code, stdout, err = invoke(["run", *base_args(env, out, "--budget-mb", 0.0008)])
    assert code == 0, err
    return out, stdout, err


def test_run_end_to_end(run_dir):
    out, stdout, err = run_dir
    assert err == ""
    for name in ("plan.json", "report.md", "summary.json", "uniform-plan.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    assert len(list(out.glob("sensitivity-fisher-*.npz"))) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["budget_bytes"] == pytest.approx(800)
    assert s["plan_bytes"] <= s["budget_bytes"]
    assert s["uniform_bytes"] <= s["budget_bytes"]
    assert s["fp_bytes"] == 720 * 4 + 42 * 4
    assert set(s["top1"]) == {"fp", "uniform", "plan"}
    assert all(0 <= v <= 100 for v in s["top1"].values())
    assert s["uniform_bits"] == {"w": 4, "a": 8}
    assert 2 <= s["avg_weight_bits"] <= 8
    assert set(s["timings_s"]) == {"sensitivity", "search", "evaluation"}
    assert all(v >= 0 for v in s["timings_s"].values())
    assert s["sensitivity_cached"] is False
    assert s["eval_images"] == 20 and s["calib_images"] == 24
    assert s["solver"]["status"] == "optimal"
    plan = Plan.load(out / "plan.json")
    assert plan.model["id"] == MODEL
    assert plan.totals["bytes"] == s["plan_bytes"]
    assert plan.recompute_totals()["bytes"] == s["plan_bytes"]
    assert "searched plan" in stdout and "plan.json" in stdout
    report = (out / "report.md").read_text()
    assert report.startswith(f"# hawq-search report: {MODEL}") and "| fc |" in report


def test_rerun_reuses_cached_sensitivity(run_dir, env):
    out, _, _ = run_dir
    before = json.loads((out / "summary.json").read_text())
    code, _, err = invoke(["run", *base_args(env, out, "--budget-mb", 0.0008)])
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["sensitivity_cached"] is True
    assert len(list(out.glob("sensitivity-*.npz"))) == 1
    assert s["plan_bytes"] == before["plan_bytes"] and s["top1"] == before["top1"]


def test_search_then_evaluate(run_dir, env, tmp_path):
    out, _, _ = run_dir
    code, stdout, err = invoke(["search", *base_args(env, out, "--budget-mb", 0.0006)])
    assert code == 0, err
    assert "wrote" in stdout and "bytes" in stdout
    plan = Plan.load(out / "plan.json")
    assert plan.totals["bytes"] <= 600
    assert plan.budgets["size_bytes"] == pytest.approx(600)
    code, stdout, err = invoke(
        ["evaluate", "--plan", out / "plan.json", *base_args(env, tmp_path / "e")]
    )
    assert code == 0, err
    assert "float top-1" in stdout and "plan top-1" in stdout and "on 20 images" in stdout


def test_non_binding_budget_warns_once(run_dir, env):
    out, _, _ = run_dir
    code, stdout, err = invoke(["search", *base_args(env, out, "--budget-mb", 0.01)])
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "--budget-mb 0.010000 MB" in lines[0] and "does not bind" in lines[0]
    # Nearly the all-8-bit plan: a channel whose loss is flat in bits (TinyNet has dead
    # channels) may take any width at the same predicted loss.
    assert 0.95 * LARGEST_BYTES <= Plan.load(out / "plan.json").totals["bytes"] <= LARGEST_BYTES


def test_bops_budget(run_dir, env):
    out, _, _ = run_dir
    code, _, err = invoke(["search", *base_args(env, out, "--bops", 1e7)])
    assert code == 0, err
    plan = Plan.load(out / "plan.json")
    assert plan.totals["bops"] <= 1e7
    assert plan.budgets["bops"] == 1e7


def test_sensitivity_and_models_commands(run_dir, env):
    out, _, _ = run_dir
    code, stdout, err = invoke(["sensitivity", *base_args(env, out)])
    assert code == 0, err
    assert "fisher sensitivities of 5 layers on 24 images" in stdout
    code, stdout, _ = invoke(["models"])
    assert code == 0 and "resnet20" in stdout and "cifar10" in stdout
    code, stdout, _ = invoke(["--version"])
    assert code == 0 and "hawq-search" in stdout


# ---- bad input ----------------------------------------------------------------------------


def _set(args: list, option: str, value) -> list:
    args = list(args)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


def _drop(args: list, option: str) -> list:
    args = list(args)
    i = args.index(option)
    del args[i : i + 2]
    return args


BAD = {
    "unknown-model": (lambda a, e: _drop(_set(a, "--model", "resnet7"), "--checkpoint"),
                      "unknown model 'resnet7'"),
    "wbits-not-int": (lambda a, e: _set(a, "--wbits", "2,x"), "comma-separated list"),
    "wbits-1": (lambda a, e: _set(a, "--wbits", "1"), "--wbits has [1]"),
    "wbits-9": (lambda a, e: _set(a, "--wbits", "2,9"), "--wbits has [9]"),
    "abits-empty": (lambda a, e: _set(a, "--abits", ""), "is not a comma-separated list of integers"),
    "bits-empty-item": (lambda a, e: _set(a, "--wbits", "2,,3"), "is not a comma-separated list"),
    "budget-inf": (lambda a, e: _set(a, "--budget-mb", "inf"), "--budget-mb must be a finite number"),
    "mean-nan": (lambda a, e: a + ["--mean", "nan,0,0", "--std", "1,1,1"], "finite numbers"),
    "abits-bad": (lambda a, e: _set(a, "--abits", "3,64"), "--abits has [64]"),
    "missing-data-dir": (lambda a, e: _set(a, "--data-dir", e["root"] / "nowhere"),
                         "does not exist"),
    "unknown-dataset": (lambda a, e: _set(a, "--dataset", "mnist"), "'mnist' is not one of"),
    "missing-checkpoint": (lambda a, e: _set(a, "--checkpoint", e["root"] / "none.pt"),
                           "none.pt does not exist"),
    "mean-without-std": (lambda a, e: _set(a, "--mean", "0.5,0.5,0.5"), "--mean and --std"),
    "mean-malformed": (lambda a, e: _set(a, "--mean", "0.5,0.5"), "three comma-separated"),
    "std-zero": (lambda a, e: _set(_set(a, "--mean", "0,0,0"), "--std", "1,0,1"),
                 "--std values must be > 0"),
    "eval-size-negative": (lambda a, e: _set(a, "--eval-size", -1), "--eval-size must be an integer >= 0"),
    "calib-size-zero": (lambda a, e: _set(a, "--calib-size", 0), "--calib-size must be an integer >= 1"),
    "budget-zero": (lambda a, e: _set(a, "--budget-mb", 0), "--budget-mb must be a finite number > 0"),
    "bops-negative": (lambda a, e: _set(a, "--bops", -5), "--bops must be a finite number > 0"),
    "batch-size-zero": (lambda a, e: _set(a, "--batch-size", 0), "--batch-size must be an integer >= 1"),
    "time-limit-zero": (lambda a, e: _set(a, "--time-limit", 0), "--time-limit must be a finite number > 0"),
    "mip-gap-one": (lambda a, e: _set(a, "--mip-gap", 1), "--mip-gap must be in [0, 1)"),
    "unknown-option": (lambda a, e: a + ["--frobnicate"], "No such option"),
    "sensitivity-bad": (lambda a, e: _set(a, "--sensitivity", "kfac"), "'kfac' is not one of"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_run_input(env, tmp_path, case):
    make, match = BAD[case]
    out = tmp_path / "out"
    code, _, err = invoke(["run", *make(base_args(env, out, "--budget-mb", 0.0008), env)])
    assert_usage_error(code, err, out, match)


def test_imagefolder_without_train(env, tmp_path):
    data = tmp_path / "only-test"
    (data / "test" / "a").mkdir(parents=True)
    out = tmp_path / "out"
    code, _, err = invoke(["run", *_set(base_args(env, out), "--data-dir", data)])
    assert_usage_error(code, err, out, f"{data / 'train'} does not exist")


def test_empty_imagefolder_class(env, tmp_path):
    data = tmp_path / "empty"
    (data / "train" / "a").mkdir(parents=True)
    (data / "test" / "a").mkdir(parents=True)
    out = tmp_path / "out"
    code, _, err = invoke(["run", *_set(base_args(env, out), "--data-dir", data)])
    assert_usage_error(code, err, out, "train")


def test_checkpoint_that_does_not_fit(env, tmp_path):
    ckpt = tmp_path / "r20.pt"
    torch.save(cifar_resnet(20).state_dict(), ckpt)
    out = tmp_path / "out"
    code, _, err = invoke(["run", *_set(base_args(env, out), "--checkpoint", ckpt)])
    assert_usage_error(code, err, out, "does not fit the network")


def test_infeasible_budget_states_smallest_size(run_dir, env):
    # With the run directory's cached sensitivities the check is immediate.
    out, _, _ = run_dir
    before = sorted(p.name for p in out.iterdir())
    code, _, err = invoke(["run", *base_args(env, out, "--budget-mb", 0.0003)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --budget-mb 0.000300 MB (300 bytes)")
    assert "is infeasible: the smallest plan with --wbits 2,4,8" in lines[0] and "needs" in lines[0]
    needed = int(lines[0].rsplit("(", 1)[1].split()[0])
    assert SMALLEST_BYTES <= needed <= SMALLEST_BYTES + 5  # 5 layers: at most 1 B rounding each
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_budget_just_above_smallest_plan_is_feasible(run_dir, env):
    out, _, _ = run_dir
    code, _, err = invoke(["search", *base_args(env, out, "--budget-mb", 0.000518)])
    assert code == 0, err
    assert SMALLEST_BYTES <= Plan.load(out / "plan.json").totals["bytes"] <= 518


def test_budget_of_exactly_the_smallest_plan_is_feasible(run_dir, env):
    """Byte-exact size constraint: no rounding reserve rejects a budget the smallest plan meets."""
    out, _, _ = run_dir
    code, _, err = invoke(["search", *base_args(env, out, "--budget-mb", SMALLEST_BYTES / 1e6)])
    assert code == 0, err
    assert Plan.load(out / "plan.json").totals["bytes"] == SMALLEST_BYTES


@pytest.mark.parametrize(
    "extra, match",
    [(["--granularity", "group:0"], "--granularity 'group:0'"),
     (["--budget-mb", 0.0003], "is infeasible")],
    ids=["granularity", "infeasible-budget"],
)  # fmt: skip
def test_cheap_checks_come_before_sensitivities(env, tmp_path, extra, match):
    out = tmp_path / "out"
    code, _, err = invoke(["run", *base_args(env, out, *extra)])
    assert_usage_error(code, err, out, match)


def test_bad_granularity_exits_2(run_dir, env):
    out, _, _ = run_dir
    for value in ("group:0", "group:x", "rows"):
        code, _, err = invoke(["search", *base_args(env, out, "--granularity", value)])
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"--granularity {value!r}" in err and "Traceback" not in err


def test_granularity_options_work(run_dir, env):
    out, _, _ = run_dir
    for value in ("layer", "group:3"):
        code, _, err = invoke(
            ["search", *base_args(env, out, "--granularity", value, "--budget-mb", 0.0009)]
        )
        assert code == 0, err
        plan = Plan.load(out / "plan.json")
        if value == "layer":
            assert all(len(set(lp.w_bits)) == 1 for lp in plan.layers)
        assert plan.totals["bytes"] <= 900


# ---- evaluate with bad plans --------------------------------------------------------------


def _evaluate(env, plan_path, tmp_path, *extra):
    return invoke(["evaluate", "--plan", plan_path, *base_args(env, tmp_path / "e"), *extra])


def test_evaluate_missing_plan(env, tmp_path):
    code, _, err = _evaluate(env, tmp_path / "nope.json", tmp_path)
    assert_usage_error(code, err, tmp_path / "e", "nope.json does not exist")


def test_evaluate_invalid_json(env, tmp_path):
    p = tmp_path / "plan.json"
    p.write_text("{not json")
    code, _, err = _evaluate(env, p, tmp_path)
    assert_usage_error(code, err, tmp_path / "e", "not valid JSON")


def test_evaluate_wrong_schema_version(run_dir, env, tmp_path):
    d = json.loads((run_dir[0] / "plan.json").read_text())
    d["schema_version"] = 99
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    code, _, err = _evaluate(env, p, tmp_path)
    assert_usage_error(code, err, tmp_path / "e", "schema_version 99 is not supported")


def test_evaluate_plan_for_another_model(run_dir, env, tmp_path):
    ckpt = tmp_path / "r20.pt"
    torch.save(cifar_resnet(20).state_dict(), ckpt)
    args = _set(_set(base_args(env, tmp_path / "e"), "--model", "resnet20"), "--checkpoint", ckpt)
    code, _, err = invoke(["evaluate", "--plan", run_dir[0] / "plan.json", *args])
    assert_usage_error(code, err, tmp_path / "e", "plan does not match the model")
    assert "conv1: weight (16, 3, 3, 3) vs plan (8, 3, 3, 3)" in err
    assert "dw: no such layer" in err and "side: no such layer" in err


def test_evaluate_plan_that_is_not_an_object(env, tmp_path):
    p = tmp_path / "plan.json"
    p.write_text("[1, 2, 3]")
    code, _, err = _evaluate(env, p, tmp_path)
    assert_usage_error(code, err, tmp_path / "e", "plan")
