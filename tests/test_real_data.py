"""Real CIFAR-10 images and pretrained ResNet-20 from ../shared (skipped when absent)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from conftest import LOSSLESS, WEIGHTS, requires_shared

from hawq_search.cli.errors import run_cli
from hawq_search.cli.main import cli
from hawq_search.data.datasets import load_subset
from hawq_search.evaluation import top1
from hawq_search.models import create_model
from hawq_search.plan import Plan

pytestmark = [requires_shared, pytest.mark.real]


def test_resnet20_pretrained_accuracy_on_lossless_images():
    loaded = create_model("resnet20", weights_dir=WEIGHTS)
    data = load_subset("imagefolder", LOSSLESS, "test", loaded.preprocess, 256, seed=0)
    assert len(data) == 256 and data.images.shape[1:] == (3, 32, 32)
    assert top1(loaded.model, data) > 85.0


def test_quick_run_on_resnet20(tmp_path):
    out = tmp_path / "run"
    args = [
        "run", "--model", "resnet20", "--weights-dir", WEIGHTS, "--dataset", "imagefolder",
        "--data-dir", LOSSLESS, "--budget-mb", "0.1", "--calib-size", "128", "--eval-size", "200",
        "--abits", "32", "--quiet", "--out", out,
    ]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run_cli(cli, [str(a) for a in args])
    assert code == 0, stderr.getvalue()
    s = json.loads((out / "summary.json").read_text())
    assert s["budget_bytes"] == pytest.approx(1e5)
    assert s["plan_bytes"] <= s["budget_bytes"]
    assert s["eval_images"] == 200 and s["calib_images"] == 128
    assert s["act_bits_summary"] == "32"
    assert s["top1"]["plan"] >= s["top1"]["uniform"]
    assert s["top1"]["fp"] > 85.0
    plan = Plan.load(out / "plan.json")
    assert plan.recompute_totals()["bytes"] == s["plan_bytes"]
    assert len(plan.layers) == 20
