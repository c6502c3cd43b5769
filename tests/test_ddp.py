"""Fine-tuning under ``torchrun --nproc-per-node 2`` (gloo on this CPU): the same weights as one
process up to float reduction order, and only rank 0 writes the run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import synthetic_data, tiny_session

from hawq_search.core.exceptions import UserInputError
from hawq_search.plan import Plan
from hawq_search.training.augment import crop_flip
from hawq_search.training.distributed import DistContext
from hawq_search.training.finetune import FINETUNED, finetune_job
from hawq_search.training.options import FinetuneOptions
from hawq_search.training.trainer import epoch_batches

TESTS = Path(__file__).parent

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

# Gradual schedule by sensitivity (rank 0 computes, broadcasts the order), KD, augmentation,
# BatchNorm in batch-statistics mode for epoch 0 (synchronised) and frozen for epoch 1.
OPTS = dict(epochs=2, schedule="gradual", batch_size=16, lr=0.05, freeze_bn_epochs=1)
TRAIN = dict(n=48, seed=5)
# Float reduction order (gradients summed over 2 processes, BatchNorm sums over 2 shares)
# changes the last bits of float32; 6 steps later the weights differ by ~1e-5 (no sync BN: 3e-3).
ATOL = 1e-4

SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
root, out = {root!r}, {out!r}
events = []

def audit(event, args):  # every file a process creates, writes, renames or removes under root
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
    else:  # a rename's target, else the path
        path, writing = args[1] if event == "os.rename" else args[0], True
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(root):
            events.append([event, path])

WATCHED = ("open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.copyfile")
sys.addaudithook(lambda event, args: audit(event, args) if event in WATCHED else None)

import torch  # torch.save to a path writes from C++, unseen by the audit hook
_save = torch.save

def save(obj, f, *args, **kw):
    audit("torch.save", (f,))
    return _save(obj, f, *args, **kw)

torch.save = save

from conftest import synthetic_data, tiny_session
from hawq_search.plan import Plan
from hawq_search.training.finetune import finetune_job
from hawq_search.training.options import FinetuneOptions

pipe = tiny_session(out, **{session!r})
plan = Plan.load({plan_path!r})
summary = finetune_job(pipe, plan, FinetuneOptions(**{opts!r}),
                       train_data=synthetic_data({n}, seed={seed}))
pipe.close()
mine = list(events)
report = {{"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
          "writes": mine, "summary": summary}}
with open(os.path.join({reports!r}, "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(report, f)
"""


def _plan(pipe, w=2, a=4):
    return pipe.make_plan(
        {layer.name: [w] * layer.out_channels for layer in pipe.graph.layers},
        dict.fromkeys(pipe.graph.act_groups, a),
    )


def test_rank_shares_are_the_single_process_batches_and_crops():
    data = synthetic_data(48, seed=1)
    one, g1 = epoch_batches(data, 3, 7, 16)
    shares = [epoch_batches(data, 3, 7, 16, rank=r, world=2) for r in range(2)]
    for x, y in one:
        parts = [next(b) for b, _ in shares]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        whole = crop_flip(x, g1)
        crops = [crop_flip(p[0], g, rank=r, world=2) for r, (p, (_, g)) in
                 enumerate(zip(parts, shares, strict=True))]  # fmt: skip
        assert torch.equal(torch.cat(crops), whole)
    assert all(g.get_state().equal(g1.get_state()) for _, g in shares)  # generators in step


def test_batch_size_must_divide_among_the_processes():
    with pytest.raises(UserInputError, match="batch_size 16 is not divisible by the 3"):
        DistContext(rank=0, world_size=3).local_batch(16)
    assert DistContext(rank=1, world_size=4).local_batch(16) == 4
    with pytest.raises(UserInputError, match="batch_size"):
        epoch_batches(synthetic_data(8), 0, 0, 16, rank=0, world=2)  # not one full batch


# Learned widths: rank 0's problem on every process, probe losses averaged over the shares.
CASES = {
    "gradual": (OPTS, dict(wbits=(2, 4, 8), abits=(4,)), False, TRAIN),
    "learned bits": (
        dict(epochs=2, schedule="direct", batch_size=16, lr=0.05, learn_bits=True,
             bits_probes=2, bits_lr=0.5),
        dict(wbits=(2, 3, 4, 8), abits=(8,), budget_mb=0.0009),
        True,
        dict(n=192, seed=3),  # 24 steps: enough probes past the warm-up for widths to move
    ),
}  # fmt: skip


@needs_gloo
@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_the_weights_one_process_does(tmp_path, case):
    opts, session, searched, train = CASES[case]
    root = tmp_path.resolve()
    reports = root / "reports"
    reports.mkdir()
    one = tiny_session(root / "one", **session)
    plan = one.search()[0] if searched else _plan(one)  # made once, in this process
    plan_path = str(root / "plan-in.json")
    plan.save(plan_path)
    script = root / "ddp_job.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), root=str(root / "two"),
                                    out=str(root / "two" / "run"), opts=opts,
                                    session=session, plan_path=plan_path,
                                    reports=str(reports), **train))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(script)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=root, start_new_session=True)  # fmt: skip
    try:  # the one-process reference while torchrun starts
        ref = finetune_job(one, plan, FinetuneOptions(**opts),
                           train_data=synthetic_data(train["n"], seed=train["seed"]))  # fmt: skip
        one.close()
        log, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers
            proc.wait()
    assert proc.returncode == 0, log[-4000:]

    r0, r1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r1["writes"] == [], r1["writes"]  # rank 1 wrote nothing at all
    written = {Path(p).name for _, p in r0["writes"]}
    assert {FINETUNED, "plan.json", ".lock"} <= written, written
    run = root / "two" / "run"
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(p.name for p in (root / "one").iterdir())
    assert not [n for n in names if n.endswith(".tmp")]

    s0, s1 = r0["summary"], r1["summary"]
    assert s0 == s1  # every process returns rank 0's summary
    pa, pb = (json.loads((d / "plan.json").read_text()) for d in (root / "one", run))
    if searched:
        _check_learned_bits(pb, plan, s0, ref)
        return
    a = torch.load(root / "one" / FINETUNED, weights_only=True)
    b = torch.load(run / FINETUNED, weights_only=True)
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    print(f"max |w_1proc - w_2proc| = {diff:.3e}")
    assert diff <= ATOL
    for la, lb in zip(pa["layers"], pb["layers"], strict=True):
        assert la["w_bits"] == lb["w_bits"]
        assert la["w_scale"] == pytest.approx(lb["w_scale"], rel=1e-4, abs=1e-6)
    assert s0["finetune"]["epoch_losses"] == pytest.approx(
        ref["finetune"]["epoch_losses"], rel=1e-4
    )


def _check_learned_bits(two: dict, plan, summary: dict, ref: dict) -> None:
    """Learned widths under torchrun: every process makes the same moves (they all read the
    same all-reduced probe losses, or DDP's gradients would mix different models), widths move,
    the delivered plan fits the budget without the snap changing it. Not compared width for
    width with one process: a width move is a threshold decision, and the MSE step a moved
    width gets is an argmin over a grid of clip ratios, so float-order differences of 1e-7 in
    the probe losses or the weights can turn one decision, after which the runs differ."""
    lb = two["provenance"]["finetune"]["learn_bits"]
    assert lb["moves"] > 0, lb  # widths moved during training
    assert lb["snap_changed_groups"] == 0  # the running plan stayed inside the budget
    assert Plan.from_dict(two).totals["bytes"] <= plan.budgets["size_bytes"]
    assert summary["finetune"]["epoch_losses"] == pytest.approx(
        ref["finetune"]["epoch_losses"], rel=0.1
    )
