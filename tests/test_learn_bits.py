"""Learned bit-widths (AdaQAT): widths follow the loss, never leave the budgets, and a
fine-tune with them delivers a plan the exact solver placed inside every budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_data, tiny_session
from test_finetune import _Stop, _stop_after

from hawq_search.core.exceptions import UserInputError
from hawq_search.plan import Plan, apply_plan
from hawq_search.training.finetune import FINETUNED, finetune_job
from hawq_search.training.learn_bits import BitLearner
from hawq_search.training.options import FinetuneOptions
from searches import Resource, SearchProblem, WeightGroup

W_BITS = (2, 3, 4, 5, 6, 8)


def _problem(budget: float) -> SearchProblem:
    """Two layers of 4 channels; size = channels * bits / 8 bytes."""
    groups = [WeightGroup(n, (0, 4), np.zeros(len(W_BITS))) for n in ("free", "needed")]
    size = np.array([[4 * b / 8 for b in W_BITS]] * 2)
    return SearchProblem(
        layer_names=("free", "needed"), layer_act_groups=("x", "x"), w_bits=W_BITS, a_bits=(8,),
        weight_groups=groups, act_groups=["x"], act_loss=np.zeros((1, 1)),
        resources=[Resource("size", "bytes", budget, weight=size)],
    )  # fmt: skip


def _loss(bits: dict[str, int]) -> float:
    """Depends on the bits of ``needed`` only (falling with more bits)."""
    return {2: 1.0, 3: 0.4, 4: 0.2, 5: 0.1, 6: 0.05, 8: 0.0}[bits["needed"]]


def _drive(learner: BitLearner, steps: int, noise: float = 0.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        for i in learner.pick(lambda g: True):
            g = learner.groups[i]
            now = {x.layer: W_BITS[x.option] for x in learner.groups}
            probe = dict(now, **{g.layer: learner.probe_bits(i)[1]})
            e = rng.normal(0, noise)
            learner.update(i, _loss(now) + e, _loss(probe) + e, step)
            sol = learner.solution()
            assert sol.within(learner.problem), (step, sol.totals)


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_bits_follow_the_loss_inside_the_budget(noise):
    problem = _problem(budget=4.0)  # both layers at 4 bits use it all
    start = np.array([W_BITS.index(4)] * 2)
    learner = BitLearner(problem, start, np.array([0]), eta=0.25)
    _drive(learner, 200, noise)
    final = {g.layer: W_BITS[g.option] for g in learner.groups}
    assert final["free"] == 2  # its loss does not depend on its bits: it drops them
    assert final["needed"] == 6  # keeps them, and takes what the other freed (6 + 2 bits fit)
    report = learner.report()
    assert report["moved_down"] == 1 and report["moved_up"] == 1
    free = next(g for g in report["groups"] if g["layer"] == "free")
    assert [b for _, b in free["trajectory"]] == [3, 2]


def test_oscillating_widths_freeze_and_state_round_trips():
    problem = _problem(budget=100.0)
    learner = BitLearner(problem, np.array([2, 2]), np.array([0]), eta=1.0, freeze_after=2)
    g = learner.groups[0]
    learner.update(0, 0.0, 0.0, 0)  # warm-up round sets lambda
    learner.update(1, 0.0, 1.0, 0)
    for step in range(20):  # alternate a strong "up" and a strong "down" signal
        up = step % 2 == 0
        i = 0
        learner.update(i, 0.0, 1.0 if up else -1.0, step)
    assert g.frozen and max(g.up_moves.values()) > 2
    other = BitLearner(problem, np.array([2, 2]), np.array([0]))
    other.load_state_dict(json.loads(json.dumps(learner.state_dict())))
    assert other.state_dict() == learner.state_dict()


def test_learner_refuses_a_plan_outside_its_budget_and_no_budget():
    with pytest.raises(UserInputError, match="does not fit"):
        BitLearner(_problem(budget=3.0), np.array([2, 2]), np.array([0]))
    p = _problem(budget=4.0)
    p.resources[0].budget = None
    with pytest.raises(UserInputError, match="need a budget"):
        BitLearner(p, np.array([2, 2]), np.array([0]))


def test_learn_bits_is_refused_with_ctmq():
    with pytest.raises(UserInputError, match="ctmq"):
        FinetuneOptions(schedule="ctmq", learn_bits=True).validate()


def _searched(out, budget_mb=0.0009):
    pipe = tiny_session(out, wbits=(2, 3, 4, 8), abits=(8,), budget_mb=budget_mb)
    plan, _ = pipe.search()
    return pipe, plan


@pytest.mark.parametrize("schedule", ["direct", "gradual"])
def test_finetune_with_learned_bits_delivers_a_plan_inside_the_budget(tmp_path, schedule):
    pipe, plan = _searched(tmp_path / "r")
    opts = FinetuneOptions(epochs=2, schedule=schedule, batch_size=16, lr=0.05,
                           learn_bits=True, bits_probes=2, bits_lr=0.5)  # fmt: skip
    s = finetune_job(pipe, plan, opts, train_data=synthetic_data(192, seed=3))
    trained = Plan.load(tmp_path / "r" / "plan.json")
    report = trained.provenance["finetune"]["learn_bits"]
    assert report["moves"] > 0  # widths moved
    assert trained.totals["bytes"] <= 900  # recomputed from the widths by Plan
    assert report["snap_changed_groups"] == 0  # the running plan was inside: snap keeps it
    assert any(g["trajectory"] for g in report["groups"])
    model = type(pipe.model)()
    model.load_state_dict(torch.load(tmp_path / "r" / FINETUNED, weights_only=True))
    from hawq_search.evaluation import top1

    assert top1(apply_plan(model, trained).eval(), pipe.eval_data) == s["top1"]["after"]


def test_resume_with_learned_bits_matches_an_uninterrupted_run(tmp_path):
    data = synthetic_data(96, seed=5)
    opts = dict(epochs=3, schedule="direct", batch_size=16, learn_bits=True, bits_probes=2,
                bits_lr=0.5)  # fmt: skip
    full, plan = _searched(tmp_path / "a")
    finetune_job(full, plan, FinetuneOptions(**opts), train_data=data)
    part, plan_b = _searched(tmp_path / "b")
    with pytest.raises(_Stop):
        finetune_job(part, plan_b, FinetuneOptions(**opts), train_data=data,
                     on_epoch_end=_stop_after(1))  # fmt: skip
    part.close()
    again, plan_c = _searched(tmp_path / "b")
    finetune_job(again, plan_c, FinetuneOptions(**opts, resume=True), train_data=data)
    a = torch.load(tmp_path / "a" / FINETUNED, weights_only=True)
    b = torch.load(tmp_path / "b" / FINETUNED, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = (json.loads((tmp_path / d / "plan.json").read_text()) for d in "ab")
    assert pa["layers"] == pb["layers"]
    la = pa["provenance"]["finetune"]["learn_bits"]["groups"]
    assert la == pb["provenance"]["finetune"]["learn_bits"]["groups"]
