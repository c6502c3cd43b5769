"""The QAT loop: seeded epoch order, batch augmentation, KD, phases, per-epoch checkpoints.

Every random choice of an epoch (sample order, crops, flips) comes from a generator seeded by
``(seed, epoch)``, and each epoch ends with an atomic checkpoint of the model (steps, bits and
BatchNorm statistics included), optimizer, scheduler and RNG state, so a resumed run repeats
exactly the epochs an uninterrupted one would have run.

BatchNorm: batch statistics throughout by default (``freeze_bn_epochs=0``), so each BN tracks
the shifted distribution quantization causes and its running statistics follow the final
weights. ``freeze_bn_epochs=k`` switches to eval-mode BN for the last k epochs (Jacob et al.
2018: the deployed statistics are exactly those the final weights were trained against; the
affine parameters keep training). Frozen statistics need the small learning rate the end of one
cosine gives: under the default ``lr_schedule="phase"`` (each phase its own cosine) a frozen
last epoch diverged (benchmarks/results/finetune.md), so freezing goes with
``lr_schedule="run"``.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hawq_search.core.exceptions import UserInputError
from hawq_search.data.datasets import Batches, StreamData, TensorData
from hawq_search.runtime import Runtime, autocast
from hawq_search.training import distributed
from hawq_search.training.augment import crop_flip
from hawq_search.training.checkpoint import load_checkpoint, save_checkpoint
from hawq_search.training.feature_kd import FeatureTaps
from hawq_search.training.kd import attention_loss, kd_loss
from hawq_search.training.options import FinetuneOptions
from hawq_search.training.qat_model import clamp_steps, lsq_layers, step_parameters
from hawq_search.training.schedules import Phase

__all__ = ["TrainResult", "epoch_batches", "lr_factor", "steps_per_epoch", "train"]


@dataclass
class TrainResult:
    epoch_times_s: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    images: int = 0  # images trained on (by all processes under torchrun)
    resumed_from: int = 0


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (a last tiny batch would give BatchNorm a noisy estimate)."""
    return max(1, n // batch_size)


def epoch_batches(data: Batches, epoch: int, seed: int, batch_size: int, rank: int = 0,
                  world: int = 1):  # fmt: skip
    """The epoch's batches in a seeded order, and the generator that drew it.

    Under ``world`` processes (torchrun) every batch of ``batch_size`` is still drawn whole
    from the same seeded order, and process ``rank`` gets its contiguous ``batch_size // world``
    rows of it: together the processes train each step on exactly the images one process
    would, in the same order, so results match one process and a resume is exact. (torch's
    DistributedSampler would shuffle with its own generator and deal samples round-robin, so
    neither the order nor the batches would be one process's.)"""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(data), generator=gen)
    take = steps_per_epoch(len(data), batch_size) * batch_size
    perm = perm[: min(take, len(data))]
    if world > 1:
        if batch_size % world or len(perm) % batch_size:
            raise UserInputError(
                f"batch_size {batch_size} must be divisible by the {world} processes and at "
                f"most the {len(data)} training images",
                params=("batch_size",),
            )
        share = batch_size // world
        perm = perm.view(-1, batch_size)[:, rank * share : (rank + 1) * share].reshape(-1)
        batch_size = share
    if isinstance(data, TensorData):
        batches = (
            (data.images[perm[i : i + batch_size]], data.labels[perm[i : i + batch_size]])
            for i in range(0, len(perm), batch_size)
        )
    elif isinstance(data, StreamData):
        idx = [data.indices[i] for i in perm.tolist()]
        batches = StreamData(data.dataset, idx, data.source, num_workers=data.num_workers).batches(
            batch_size
        )
    else:
        raise TypeError(f"cannot shuffle {type(data).__name__}: use TensorData or StreamData")
    return batches, gen


def apply_phase(model: nn.Module, phase: Phase) -> None:
    """Set every layer's and activation quantizer's bits to the phase's."""
    for name, m in lsq_layers(model).items():
        m.set_bits(torch.tensor(phase.w_bits[name]))
        if m.act_quant is not None:
            m.act_quant.set_bits(phase.a_bits[name])


def lr_factor(step: int, total: int, starts: list[int]) -> float:
    """Cosine factor of the learning rate at ``step``: one cosine from 1 to 0 over each span
    between consecutive ``starts`` (``[0]``: one cosine over the ``total`` steps)."""
    k = max(0, bisect.bisect_right(starts, step) - 1)
    begin, end = starts[k], (starts[k + 1] if k + 1 < len(starts) else total)
    span = max(1, end - begin)
    return 0.5 * (1 + math.cos(math.pi * min(step - begin, span) / span))


def _optimizer(model: nn.Module, opts: FinetuneOptions, total: int, starts=(0,)):
    steps = {id(p) for p in step_parameters(model)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in steps], "weight_decay": opts.weight_decay},
        {"params": [p for p in params if id(p) in steps], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD(groups, lr=opts.lr, momentum=opts.momentum)
    starts = sorted(set(starts) | {0})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(t, total, starts))
    return opt, sched


def _reset_momentum(opt: torch.optim.Optimizer) -> None:
    """Start the momentum afresh (a phase trained as a run of its own)."""
    for state in opt.state.values():
        state.pop("momentum_buffer", None)


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(model: nn.Module, teacher: nn.Module | None, data: Batches, phases: list[Phase],
          opts: FinetuneOptions, runtime: Runtime, checkpoint: Path, fingerprint: dict,
          progress=None, on_epoch_end: Callable[[int], None] | None = None,
          apply: Callable[[nn.Module, Phase], None] = apply_phase,
          learner=None) -> TrainResult:  # fmt: skip
    """Train ``model`` in place for ``opts.epochs`` epochs (resuming from ``checkpoint`` when
    ``opts.resume`` and it exists); ``learner`` (a :class:`~hawq_search.training.learn_bits.
    BitLearner`) learns the widths and then also places them when a phase starts."""
    if learner is not None:
        apply = learner.apply_phase
    spe = steps_per_epoch(len(data), opts.batch_size)
    total = opts.epochs * spe
    per_phase = opts.lr_schedule == "phase"
    opt, sched = _optimizer(model, opts, total, [p.start for p in phases] if per_phase else [0])
    result, start = TrainResult(), 0
    state = load_checkpoint(checkpoint, fingerprint) if opts.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = result.resumed_from = int(state["epoch"])
        result.epoch_times_s, result.epoch_losses = list(state["times"]), list(state["losses"])
        if learner is not None:
            learner.load_state_dict(state["learner"])
    if teacher is not None:
        teacher.eval()
    taps = None
    if teacher is not None and opts.feature_kd > 0:
        taps = (FeatureTaps(model), FeatureTaps(teacher))
    freeze_from = opts.epochs - min(opts.freeze_bn_epochs, opts.epochs - 1)
    device = runtime.device
    ctx = distributed.current()
    net = ctx.wrap(model)  # DDP under torchrun; ``model`` stays the plain module
    for epoch in range(start, opts.epochs):
        t0, loss_sum = time.perf_counter(), 0.0
        _set_train_mode(model, epoch >= freeze_from)
        batches, gen = epoch_batches(data, epoch, opts.seed, opts.batch_size, ctx.rank,
                                     ctx.world_size)  # fmt: skip
        for i, (x, y) in enumerate(batches):
            step = epoch * spe + i
            for ph in phases:
                if ph.start == step:
                    apply(model, ph)
                    if per_phase and step > 0:
                        _reset_momentum(opt)
            x, y = x.to(device), y.to(device)
            if opts.augment:
                x = crop_flip(x, gen, rank=ctx.rank, world=ctx.world_size)
            loss_sum += _step(net, teacher, x, y, opts, runtime, opt, sched, learner, step, total,
                              taps)  # fmt: skip
            result.images += len(y) * ctx.world_size
            if progress is not None:
                progress.update(len(y) * ctx.world_size)
        result.epoch_times_s.append(time.perf_counter() - t0)
        result.epoch_losses.append(ctx.all_reduce_mean(loss_sum / spe))
        if ctx.is_main:  # one writer; the barrier keeps the others from running ahead
            save_checkpoint(checkpoint, {
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                "times": result.epoch_times_s, "losses": result.epoch_losses,
                "fingerprint": fingerprint,
                "learner": learner.state_dict() if learner is not None else None,
            })  # fmt: skip
        ctx.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    for tap in taps or ():
        tap.close()
    model.eval()
    return result


def _step(model, teacher, x, y, opts, runtime, opt, sched, learner=None, step=0, total=1,
          taps=None):  # fmt: skip
    t_logits, t_feats = None, None
    if teacher is not None:
        with torch.no_grad(), autocast(runtime):
            t_logits = teacher(x)
        t_feats = taps[1].take() if taps is not None else None

    def loss_of():
        with autocast(runtime):
            logits = model(x)
        loss = kd_loss(logits, t_logits, y, opts.temperature, opts.alpha)
        if t_feats is not None:
            loss = loss + opts.feature_kd * attention_loss(taps[0].take(), t_feats)
        return loss

    probes = []
    if learner is not None and learner.active(step, total):
        probes = learner.probe(model, loss_of)
    loss = loss_of()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    clamp_steps(model)
    if probes:
        learner.learn(model, float(loss.detach()), probes, step)
    return float(loss.detach())
