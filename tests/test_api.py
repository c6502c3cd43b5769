"""The Python API: the README's example runs as written (a model and data the package does not
know), and search_plan's budgets, errors, loss_fn and custom searches behave as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hawq_search import InfeasibleBudgetError, UserInputError, apply_plan, search_plan
from searches import BruteForceSearch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    size = int(out[0].split()[0])
    assert size <= 4000
    assert out[1] == "torch.Size([4, 5])"
    assert (tmp_path / "plan.json").is_file()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


def _batches(n: int = 64):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_budget_is_met_and_the_model_is_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = search_plan(model, _batches(), budget_mb=0.0009, wbits=(2, 4, 8), abits=(32,))
    assert plan.totals["bytes"] <= 900
    assert plan.model["source"] == "python" and plan.model["input_shape"] == [3, 12, 12]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    q = apply_plan(model, plan)
    assert q(torch.randn(2, 3, 12, 12)).shape == (2, 4)


def test_custom_loss_and_search_agree_with_the_ilp():
    def loss_fn(out, y):
        return nn.functional.cross_entropy(out, y, reduction="none")

    kw = dict(budget_mb=0.0009, wbits=(2, 8), abits=(32,), granularity="layer", loss_fn=loss_fn)
    ilp = search_plan(_model(), _batches(), **kw)
    brute = search_plan(_model(), _batches(), search=BruteForceSearch(), **kw)
    assert [lp.w_bits for lp in ilp.layers] == [lp.w_bits for lp in brute.layers]
    assert ilp.provenance["search"]["search"] == "ilp-highs"


def test_errors_are_user_errors():
    with pytest.raises(InfeasibleBudgetError, match="budget_mb"):
        search_plan(_model(), _batches(), budget_mb=1e-6)
    with pytest.raises(UserInputError, match="must be a torch.nn.Module"):
        search_plan("resnet20", _batches(), budget_mb=0.5)
    with pytest.raises(UserInputError):
        search_plan(_model(), [], budget_mb=0.5)
    with pytest.raises(UserInputError, match="example_input"):
        search_plan(_model(), _batches(), budget_mb=0.5, example_input=torch.zeros(1, 5, 3, 3))


def test_measured_searches_score_plans_on_samples_after_the_calibration_ones():
    kw = dict(budget_mb=0.0009, wbits=(2, 4, 8), abits=(32,), calib_size=32, heldout_size=32)
    ilp = search_plan(_model(), _batches(), **kw)
    for extra in ({"rerank": 3}, {"search": "optuna", "trials": 4}):
        plan = search_plan(_model(), _batches(), **kw, **extra)
        assert plan.recompute_totals()["bytes"] <= 900
        # the measured best is the ILP plan or one the measurement prefers
        assert plan.totals["predicted_loss_increase"] >= ilp.totals["predicted_loss_increase"] * (
            1 - 1e-6
        )
    with pytest.raises(UserInputError, match="beyond the 32 calibration"):
        search_plan(_model(), _batches(32), **kw, rerank=2)
