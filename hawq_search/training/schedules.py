"""Which bits each channel uses when: direct QAT, gradual QGAT and CTMQ as lists of phases.

A phase starts at a global training step and sets every layer's per-channel bits and every
activation group's bits (32 = not quantized). The last phase (every channel at its
planned width) gets ``final_share`` of the run's steps (default half: the target widths need the
most training, measured in benchmarks/results/finetune.md) and the others split the rest evenly,
so a schedule fits any number of epochs (also one) and resumes from any epoch boundary.

- ``direct``: everything at its planned bits from the first step.
- ``gradual`` (QGAT): the quantized channels, ranked (least sensitive first by default), move
  to their planned bits in cumulative stages (25/50/75/100 %); activations are quantized from
  the start; a channel is never un-quantized.
- ``ctmq``: per cycle a ladder from ``ladder_top`` bits down one bit at a time, each channel
  at ``max(planned, rung)`` so it stops at its own width, each rung starting from the previous
  rung's weights; between cycles one float phase (the "accurate model") retrains the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hawq_search.core.exceptions import UserInputError
from hawq_search.plan import Plan

__all__ = ["Phase", "channel_order", "make_phases"]

FLOAT = 32


@dataclass(frozen=True)
class Phase:
    name: str
    start: int  # global step
    w_bits: dict[str, list[int]]
    a_bits: dict[str, int]  # per layer (layers sharing an input agree)


def _planned(plan: Plan) -> tuple[dict, dict]:
    return (
        {lp.name: list(lp.w_bits) for lp in plan.layers},
        {lp.name: lp.a_bits for lp in plan.layers},
    )


def channel_order(plan: Plan, order: str, scores: dict | None = None, seed: int = 0) -> list:
    """The quantized channels ``(layer, c)`` in the order they are quantized. ``scores[layer][c]``
    is each channel's predicted loss increase at its planned bits (``order`` sensitivity:
    ascending; reverse: descending); random: a seeded permutation. Ties keep plan order."""
    chans = [(lp.name, c) for lp in plan.layers for c, b in enumerate(lp.w_bits) if b < 16]
    if order == "random":
        perm = np.random.default_rng(seed).permutation(len(chans))
        return [chans[i] for i in perm]
    if scores is None:
        raise UserInputError(f"order {order} needs channel sensitivities", params=("order",))
    s = np.array([float(scores[n][c]) for n, c in chans])
    key = s if order == "sensitivity" else -s
    return [chans[i] for i in np.argsort(key, kind="stable")]


def _gradual(plan: Plan, fractions, ranked: list) -> list[tuple[str, dict, dict]]:
    planned_w, planned_a = _planned(plan)
    out = []
    for f in fractions:
        w = {n: [b if b >= 16 else FLOAT for b in bits] for n, bits in planned_w.items()}
        for name, c in ranked[: int(round(f * len(ranked)))]:
            w[name][c] = planned_w[name][c]
        out.append((f"quantize {100 * f:g} %", w, dict(planned_a)))
    return out


def _ctmq(plan: Plan, top: int, cycles: int) -> list[tuple[str, dict, dict]]:
    planned_w, planned_a = _planned(plan)
    low = min([b for bits in planned_w.values() for b in bits if b < 16] or [top])
    rungs = list(range(max(top, low), low - 1, -1))
    out = []
    for k in range(cycles):
        for r in rungs:
            w = {n: [b if b >= 16 else max(b, r) for b in bits] for n, bits in planned_w.items()}
            a = {g: b if b >= 16 else max(b, r) for g, b in planned_a.items()}
            out.append((f"cycle {k + 1}: {r} bits", w, a))
        if k < cycles - 1:
            w = {n: [FLOAT] * len(bits) for n, bits in planned_w.items()}
            out.append((f"cycle {k + 1}: float", w, dict.fromkeys(planned_a, FLOAT)))
    return out


def make_phases(plan: Plan, schedule: str, total_steps: int, *, ranked=None, stages=(1.0,),
                ladder_top: int = 8, cycles: int = 1,
                final_share: float | None = None) -> list[Phase]:  # fmt: skip
    """The phases of ``schedule`` over ``total_steps`` steps: the last phase (every channel at
    its planned width) gets ``final_share`` of them and the others split the rest evenly
    (``None``: every phase an even share)."""
    if schedule == "direct":
        w, a = _planned(plan)
        parts = [("direct", w, a)]
    elif schedule == "gradual":
        parts = _gradual(plan, stages, ranked)
    elif schedule == "ctmq":
        parts = _ctmq(plan, ladder_top, cycles)
    else:
        raise UserInputError(f"schedule {schedule!r} is unknown", params=("schedule",))
    n = len(parts)
    if final_share is None or n == 1:
        return [Phase(name, (k * total_steps) // n, w, a) for k, (name, w, a) in enumerate(parts)]
    ramp = total_steps - max(1, round(final_share * total_steps))  # the last phase runs
    starts = [(k * ramp) // (n - 1) for k in range(n - 1)] + [ramp]
    return [Phase(name, s, w, a) for s, (name, w, a) in zip(starts, parts, strict=True)]
