"""Fine-tuning: LSQ gradients, schedules, training, exact resume and the exported plan, on
TinyNet and synthetic data (each test a few seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import invoke_cli, remove_user_env, synthetic_data, tiny_session, write_user_env

from hawq_search.plan import Plan, apply_plan
from hawq_search.training.finetune import FINETUNED, finetune_job
from hawq_search.training.fused_lsq import lsq_act_quantize
from hawq_search.training.lsq import grad_scale, weight_grad_scale
from hawq_search.training.options import FinetuneOptions
from hawq_search.training.qat_model import build_qat_model, export_plan, float_state_dict
from hawq_search.training.schedules import channel_order, make_phases
from hawq_search.training.trainer import _optimizer, _reset_momentum, apply_phase, lr_factor


def _plan(pipe, w=2, a=4):
    return pipe.make_plan(
        {layer.name: [w] * layer.out_channels for layer in pipe.graph.layers},
        dict.fromkeys(pipe.graph.act_groups, a),
    )


# ---- LSQ math ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("qmin,qmax", [(-7.0, 7.0), (0.0, 15.0), (-1.0, 1.0)])
def test_lsq_gradients_match_the_formula(seed, qmin, qmax):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, generator=g, dtype=torch.float64) * 3
    s = torch.tensor(0.3 + torch.rand(1, generator=g).item(), dtype=torch.float64)
    s.requires_grad_(True)
    x.requires_grad_(True)
    gs = 0.123
    lsq_act_quantize(x, s, gs, qmin, qmax).sum().backward()
    v = x.detach() / s.detach()
    inside = (v >= qmin) & (v <= qmax)
    ds = torch.where(v < qmin, qmin, torch.where(v > qmax, qmax, torch.round(v) - v))
    assert torch.allclose(s.grad, (ds.sum() * gs).reshape(()))
    assert torch.equal(x.grad, inside.double())  # clipped straight-through estimator


def test_grad_scale_keeps_the_value_and_weight_scale_formula():
    s = torch.rand(7) + 0.1
    assert torch.equal(grad_scale(s, 0.37), s)
    bits = torch.tensor([2, 4, 8, 32])
    g = weight_grad_scale(bits, 9)
    want = [1 / (9 * 1) ** 0.5, 1 / (9 * 7) ** 0.5, 1 / (9 * 127) ** 0.5, 1.0]
    assert torch.allclose(g, torch.tensor(want))


# ---- schedules ---------------------------------------------------------------------------


def test_gradual_quantizes_the_stated_fractions_in_the_stated_order(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    plan = _plan(pipe, 4)
    scores = {lp.name: torch.rand(len(lp.w_bits)).tolist() for lp in plan.layers}
    ranked = channel_order(plan, "sensitivity", scores)
    flat = [scores[n][c] for n, c in ranked]
    assert flat == sorted(flat)
    rev = channel_order(plan, "reverse", scores)
    assert [scores[n][c] for n, c in rev] == sorted(flat, reverse=True)
    phases = make_phases(plan, "gradual", 40, ranked=ranked, stages=(0.25, 0.5, 0.75, 1.0))
    assert [p.start for p in phases] == [0, 10, 20, 30]
    n = len(ranked)
    for phase, f in zip(phases, (0.25, 0.5, 0.75, 1.0), strict=True):
        on = {
            (name, c) for name, bits in phase.w_bits.items() for c, b in enumerate(bits) if b < 16
        }
        assert on == set(ranked[: round(f * n)])
    assert sorted(channel_order(plan, "random", seed=1)) == sorted(ranked)


def test_ctmq_ladder_steps_each_channel_down_to_its_own_width(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    plan = _plan(pipe, 4)
    plan.layers[0].w_bits = [2] * len(plan.layers[0].w_bits)
    phases = make_phases(plan, "ctmq", 100, ladder_top=8, cycles=2)
    names = [p.name for p in phases]
    assert names[:7] == [f"cycle 1: {b} bits" for b in range(8, 1, -1)]
    assert names[7] == "cycle 1: float" and names[-1] == "cycle 2: 2 bits" and len(names) == 15
    first, other = plan.layers[0].name, plan.layers[1].name
    assert [p.w_bits[other][0] for p in phases[:7]] == [8, 7, 6, 5, 4, 4, 4]
    assert [p.w_bits[first][0] for p in phases[:7]] == [8, 7, 6, 5, 4, 3, 2]
    assert set(phases[7].w_bits[first]) == {32}


# ---- training, export, resume ----------------------------------------------------------------


def test_training_lowers_the_loss_and_the_plan_rebuilds_the_model_exactly(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    plan = _plan(pipe, 2)
    opts = FinetuneOptions(epochs=4, schedule="direct", batch_size=16, lr=0.05, kd=False,
                           augment=False)  # fmt: skip
    s = finetune_job(pipe, plan, opts, train_data=synthetic_data(96, seed=3))
    losses = s["finetune"]["epoch_losses"]
    assert losses[-1] < losses[0]
    trained = Plan.load(tmp_path / "r" / "plan.json")
    assert all(lp.w_scale is not None for lp in trained.layers)
    assert trained.provenance["finetune"]["schedule"] == "direct"
    model = type(pipe.model)()
    model.load_state_dict(torch.load(tmp_path / "r" / FINETUNED, weights_only=True))
    q = apply_plan(model, trained).eval()
    from hawq_search.evaluation import top1

    assert top1(q, pipe.eval_data) == s["top1"]["after"]
    assert set(s["top1"]) >= {"before", "after", "fp"}


def test_qat_model_in_eval_mode_equals_the_rebuilt_model(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    plan = _plan(pipe, 3)
    q = build_qat_model(pipe.model, plan)
    with torch.no_grad():
        for m in q.modules():
            if hasattr(m, "w_step"):
                m.w_step.mul_(1.1)
            if hasattr(m, "step") and isinstance(m.step, torch.nn.Parameter):
                m.step.mul_(0.93)
    q.eval()
    x = synthetic_data(16).images
    exported = Plan.from_dict(json.loads(json.dumps(export_plan(q, plan, {}).to_dict())))
    model = type(pipe.model)()
    model.load_state_dict(float_state_dict(q, pipe.model))
    assert torch.equal(apply_plan(model, exported).eval()(x), q(x))


def test_phases_reinitialise_steps_and_end_at_the_plan(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    plan = _plan(pipe, 4)
    q = build_qat_model(pipe.model, plan)
    phases = make_phases(plan, "ctmq", 10, ladder_top=6, cycles=1)
    for p in phases:
        apply_phase(q, p)
    export_plan(q, plan, {})  # raises unless every channel is at its planned bits


class _Stop(Exception):
    pass


def _stop_after(k):
    def hook(epoch):
        if epoch == k:
            raise _Stop

    return hook


# the defaults (one cosine per phase, live BatchNorm) and the classic recipe (one cosine, a
# frozen last epoch), so the BatchNorm-mode switch is resumed across too
@pytest.mark.parametrize("schedule,lr_schedule,freeze_bn", [("gradual", "phase", 0),
                         ("gradual", "run", 1), ("ctmq", "run", 1), ("ctmq", "phase", 0)])  # fmt: skip
def test_resume_ends_exactly_where_an_uninterrupted_run_does(tmp_path, schedule, lr_schedule,
                                                             freeze_bn):  # fmt: skip
    data = synthetic_data(64, seed=5)
    opts = dict(epochs=3, schedule=schedule, batch_size=16, order="random", ladder_top=4,
                cycles=1, lr_schedule=lr_schedule, freeze_bn_epochs=freeze_bn)  # fmt: skip
    full = tiny_session(tmp_path / "a", wbits=(2, 4, 8), abits=(4,))
    finetune_job(full, _plan(full), FinetuneOptions(**opts), train_data=data)
    part = tiny_session(tmp_path / "b", wbits=(2, 4, 8), abits=(4,))
    with pytest.raises(_Stop):
        finetune_job(part, _plan(part), FinetuneOptions(**opts), train_data=data,
                     on_epoch_end=_stop_after(1))  # fmt: skip
    part.close()
    again = tiny_session(tmp_path / "b", wbits=(2, 4, 8), abits=(4,))
    s = finetune_job(again, _plan(again), FinetuneOptions(**opts, resume=True), train_data=data)
    assert s["finetune"]["resumed_from_epoch"] == 1
    a = torch.load(tmp_path / "a" / FINETUNED, weights_only=True)
    b = torch.load(tmp_path / "b" / FINETUNED, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = (json.loads((tmp_path / d / "plan.json").read_text()) for d in "ab")
    assert pa["layers"] == pb["layers"]


# ---- command line ----------------------------------------------------------------------------

USER_MODULE = "hawq_user_models_ft"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = write_user_env(tmp_path_factory.mktemp("ft"), USER_MODULE, 4, 3)
    yield env
    remove_user_env(env, USER_MODULE)


def _args(env, out, *extra):
    return [
        "--model", f"{USER_MODULE}:tiny", "--checkpoint", env["ckpt"], "--dataset",
        "imagefolder", "--data-dir", env["data"], "--calib-size", 24, "--eval-size", 20,
        "--wbits", "2,4,8", "--abits", "8", "--batch-size", 32, "--quiet", "--out", out, *extra,
    ]  # fmt: skip


def test_cli_finetune_end_to_end_and_evaluate_reproduces_top1(env, tmp_path):
    out = tmp_path / "r"
    code, _, err = invoke_cli(["search", *_args(env, out, "--budget-mb", 0.0008)])
    assert code == 0, err
    code, stdout, err = invoke_cli(
        ["finetune", "--plan", out / "plan.json", "--epochs", 2, "--train-batch-size", 8,
         *_args(env, out)]
    )  # fmt: skip
    assert code == 0, err
    assert "after" in stdout
    s = json.loads((out / "summary.json").read_text())
    assert (out / "plan-before-finetune.json").is_file()
    code, stdout, err = invoke_cli(
        ["evaluate", "--plan", out / "plan.json",
         *_args(env, tmp_path / "e")[:2], "--checkpoint", out / FINETUNED,
         *_args(env, tmp_path / "e")[4:]]
    )  # fmt: skip
    assert code == 0, err
    assert f"plan top-1 {s['top1']['after']:.2f} %" in stdout


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--epochs", 0, "--plan", "PLAN"], "--epochs must be an integer >= 1"),
        (["--epochs", 1, "--plan", "MISSING"], "does not exist"),
        (["--epochs", 1, "--plan", "PLAN", "--stages", "0.5,0.25"], "--stages"),
        (["--epochs", 1, "--plan", "OTHER"], "plan does not match the model"),
    ],
)
def test_cli_finetune_bad_input_is_one_line_exit_2(env, tmp_path, extra, match):
    pipe = tiny_session(tmp_path / "p", wbits=(2, 4, 8), abits=(8,))
    plan = _plan(pipe, 4, 8)
    plan.save(tmp_path / "plan.json")
    other = Plan.from_dict(plan.to_dict())
    other.layers = other.layers[:-1]
    other.save(tmp_path / "other.json")
    names = {"PLAN": tmp_path / "plan.json", "MISSING": tmp_path / "nope.json",
             "OTHER": tmp_path / "other.json"}  # fmt: skip
    extra = [names.get(a, a) if isinstance(a, str) else a for a in extra]
    code, _, err = invoke_cli(["finetune", *extra, *_args(env, tmp_path / "o")])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_cli_run_with_finetune_epochs(env, tmp_path):
    out = tmp_path / "r"
    code, stdout, err = invoke_cli(
        ["run", *_args(env, out, "--budget-mb", 0.0008, "--finetune-epochs", 1)]
    )
    assert code == 0, err
    assert "fine-tuned 1 epochs" in stdout
    s = json.loads((out / "summary.json").read_text())
    assert {"fp", "uniform", "plan", "before", "after"} <= set(s["top1"])
    assert s["top1"]["before"] == s["top1"]["plan"]
    assert "finetune" in Plan.load(out / "plan.json").provenance
    assert "finetune" not in Plan.load(out / "plan-before-finetune.json").provenance


def test_cli_run_finetune_epochs_zero_is_exit_2(env, tmp_path):
    code, _, err = invoke_cli(["run", *_args(env, tmp_path / "o", "--finetune-epochs", 0)])
    assert code == 2 and "--finetune-epochs must be" in err and len(err.strip().splitlines()) == 1


def test_python_finetune_api(tmp_path):
    from conftest import tiny_net

    from hawq_search import finetune

    pipe = tiny_session(tmp_path / "p", wbits=(2, 4, 8), abits=(8,))
    plan = _plan(pipe, 4, 8)
    data = synthetic_data(64, seed=2)
    batches = [(data.images[i : i + 16], data.labels[i : i + 16]) for i in range(0, 64, 16)]
    model, trained = finetune(tiny_net(), plan, batches, epochs=1, out=str(tmp_path / "o"),
                              calib_size=32, batch_size=16, device="cpu")  # fmt: skip
    assert "finetune" in trained.provenance
    x = data.images[:8]
    ref = build_qat_model(model, trained).eval()
    assert torch.equal(apply_plan(model, trained).eval()(x), ref(x))


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import synthetic_data, tiny_session
from test_finetune import _plan
from hawq_search.training.finetune import finetune_job
from hawq_search.training.options import FinetuneOptions

def kill(epoch):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)

pipe = tiny_session({out!r}, wbits=(2, 4, 8), abits=(4,))
finetune_job(pipe, _plan(pipe), FinetuneOptions(**{opts!r}), train_data=synthetic_data(64, seed=5),
             on_epoch_end=kill)
"""


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    opts = dict(epochs=3, schedule="ctmq", batch_size=16, ladder_top=4, cycles=1)
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "b"),
                                opts=opts)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "b" / FINETUNED).exists()
    data = synthetic_data(64, seed=5)
    again = tiny_session(tmp_path / "b", wbits=(2, 4, 8), abits=(4,))
    s = finetune_job(again, _plan(again), FinetuneOptions(**opts, resume=True), train_data=data)
    assert s["finetune"]["resumed_from_epoch"] == 2
    full = tiny_session(tmp_path / "a", wbits=(2, 4, 8), abits=(4,))
    finetune_job(full, _plan(full), FinetuneOptions(**opts), train_data=data)
    a = torch.load(tmp_path / "a" / FINETUNED, weights_only=True)
    b = torch.load(tmp_path / "b" / FINETUNED, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "b").glob("*.tmp"))


# ---- feature distillation ------------------------------------------------------------------


def test_feature_taps_pair_up_and_attention_loss_sees_a_changed_student():
    import copy

    from conftest import tiny_net

    from hawq_search.training.feature_kd import FeatureTaps
    from hawq_search.training.kd import attention_loss

    teacher = tiny_net().eval()
    student = copy.deepcopy(teacher)
    ts, tt = FeatureTaps(student), FeatureTaps(teacher)
    x = synthetic_data(8).images
    student(x), teacher(x)
    s, t = ts.take(), tt.take()
    assert len(s) == len(t) == 7 and all(a.dim() == 4 for a in s)  # TinyNet's 4-D children
    assert float(attention_loss(s, t).detach()) == 0.0
    with torch.no_grad():
        student.conv1.weight.mul_(torch.linspace(0.1, 3, 8)[:, None, None, None])
    student(x), teacher(x)
    assert float(attention_loss(ts.take(), tt.take()).detach()) > 1e-4
    ts.close()
    student(x)
    assert ts.features == []  # hooks removed


def test_finetune_with_feature_distillation_trains(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    opts = FinetuneOptions(epochs=3, schedule="direct", batch_size=16, lr=0.05, feature_kd=1.0)
    s = finetune_job(pipe, _plan(pipe, 2), opts, train_data=synthetic_data(96, seed=3))
    losses = s["finetune"]["epoch_losses"]
    assert losses[-1] < losses[0]
    with pytest.raises(Exception, match="teacher"):
        FinetuneOptions(feature_kd=1.0, kd=False).validate()


def test_final_share_gives_the_planned_widths_their_share_of_the_steps(tmp_path):
    pipe = tiny_session(tmp_path / "r", wbits=(2, 4, 8), abits=(4,))
    plan = _plan(pipe, 2)
    ranked = channel_order(plan, "random", seed=0)
    phases = make_phases(plan, "gradual", 80, ranked=ranked, stages=(0.25, 0.5, 0.75, 1.0),
                         final_share=0.5)  # fmt: skip
    assert [p.start for p in phases] == [0, 13, 26, 40]
    ctmq = make_phases(plan, "ctmq", 100, ladder_top=4, cycles=1, final_share=0.6)
    assert ctmq[-1].start == 40 and ctmq[-1].name == "cycle 1: 2 bits"
    assert [p.start for p in make_phases(plan, "direct", 50, final_share=0.5)] == [0]
    with pytest.raises(Exception, match="final_share"):
        FinetuneOptions(final_share=0.0).validate()


def test_lr_per_phase_restarts_the_cosine_at_each_phase_and_resets_the_momentum():
    starts = [0, 10, 30]
    assert lr_factor(0, 40, [0]) == 1.0 and lr_factor(20, 40, [0]) == pytest.approx(0.5)
    for begin, end in ((0, 10), (10, 30), (30, 40)):
        assert lr_factor(begin, 40, starts) == 1.0  # each phase starts at the full rate
        mid = (begin + end) // 2
        want = 0.5 * (1 + math.cos(math.pi * (mid - begin) / (end - begin)))
        assert lr_factor(mid, 40, starts) == pytest.approx(want)
        assert lr_factor(end - 1, 40, starts) < lr_factor(begin + 1, 40, starts)
    model = torch.nn.Linear(3, 2)
    opts = FinetuneOptions(lr_schedule="phase")
    opt, _ = _optimizer(model, opts, 40, starts)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert all("momentum_buffer" in s for s in opt.state.values())
    _reset_momentum(opt)
    assert not any("momentum_buffer" in s for s in opt.state.values())
    opt.step()  # the buffer starts again from the gradient
    assert all("momentum_buffer" in s for s in opt.state.values())
    with pytest.raises(Exception, match="lr_schedule"):
        FinetuneOptions(lr_schedule="step").validate()


def test_cli_defaults_are_the_library_defaults():
    """A recipe default changed in one place only would make ``finetune`` and the Python API
    train differently."""
    import click

    from hawq_search.cli.main import _finetune_options, finetune

    ctx = click.Context(finetune)
    kw = {p.name: p.process_value(ctx, p.get_default(ctx)) for p in finetune.params
          if not p.required}  # fmt: skip
    kw.setdefault("epochs", FinetuneOptions().epochs)
    assert _finetune_options(kw) == FinetuneOptions()
