"""Learnable bit-widths during QAT (AdaQAT, Gernigon et al. 2024), inside every budget.

Unit of learning: the channels of one layer that the plan gives one width (a *bit group*:
for a per-layer plan, the layer). Each group holds a real position ``p`` on the problem's
ordered weight options (e.g. 2, 3, 4, 5, 6, 8 bits) and uses option ``ceil(p)`` in the forward
pass. Every training step probes a few groups round-robin, on the step's own batch and with
the same weights, without gradients: the loss with the group one option lower (or one higher
at the lowest option) against the loss at its width. The discrete derivative of
``loss + lambda * cost``, with ``cost`` the budgeted totals (size, BOPs, latency, energy: the
search problem's own arrays) each divided by its budget, moves ``p``:

    d = lambda * dC - gain         (gain: loss decrease the higher option buys; dC: its cost)
    p -= eta * d / (|gain| + lambda * dC)     (normalised: a probe moves p by at most eta)

``lambda`` is measured, not guessed: the first round of probes moves nothing and sets it to
the median ``gain / dC``; a dual step then keeps the plan near its budgets (lambda grows while
the tightest budget is more than 99.5 % used and shrinks below, within a factor 1000 of its
start). A move that would break a
budget is refused (projection: the running plan is always inside every budget, checked on
the problem's totals and, with an accelerator, on its exact tile-padded costs). A group that
moved up from the same width more than ``freeze_after`` times oscillates and is frozen.
Probes leave BatchNorm statistics and learned steps untouched; a group's channels that move
get MSE steps, as every schedule change does. Activation widths stay as planned.

Bits are learned while a group's channels are all quantized and during the first
``until`` fraction of the steps; the rest trains at the final widths.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hawq_search.core.exceptions import UserInputError
from hawq_search.training.qat_model import lsq_layers
from searches import SearchProblem, Solution

__all__ = ["BitGroup", "BitLearner"]

DUAL_RATE = 5.0  # lambda *= exp(DUAL_RATE * (usage - DUAL_TARGET)) per probe
DUAL_TARGET = 0.995
DUAL_RANGE = 1e3  # lambda stays within this factor of its measured start


@dataclass
class BitGroup:
    layer: str
    members: list[int]  # indices of the problem's weight groups
    channels: list[int]  # output channels of the layer
    option: int  # index into problem.w_bits used now
    position: float  # real-valued option position; option == ceil(position)
    start_bits: int
    trajectory: list[list[int]] = field(default_factory=list)  # [step, bits] at every move
    up_moves: dict[int, int] = field(default_factory=dict)  # option -> upward moves from it
    frozen: bool = False
    probes: int = 0


class BitLearner:
    """Learns the widths of a plan's bit groups; see the module docstring."""

    def __init__(
        self,
        problem: SearchProblem,
        w_choice: np.ndarray,
        a_choice: np.ndarray,
        *,
        eta: float = 0.25,
        probes_per_step: int = 1,
        until: float = 0.75,
        freeze_after: int = 10,
        exact_ok: Callable[[Solution], bool] | None = None,
        reduce: Callable[[float], float] = float,
    ) -> None:
        self.problem = problem
        self.w_choice = np.asarray(w_choice, dtype=np.int64).copy()
        self.a_choice = np.asarray(a_choice, dtype=np.int64).copy()
        self.eta, self.probes_per_step = float(eta), int(probes_per_step)
        self.until, self.freeze_after = float(until), int(freeze_after)
        self.exact_ok, self.reduce = exact_ok, reduce
        self.lam: float | None = None
        self.lam0: float | None = None
        self.warmup: dict[int, float] = {}  # group -> gain/dC of its first probe
        self.cursor = 0
        self.budgeted = [r for r in problem.resources if r.budget is not None]
        if not self.budgeted:
            raise UserInputError(
                "learned bit-widths need a budget to trade against: set budget_mb, bops, "
                "latency_ms or energy_mj (or the plan's budgets)",
                params=("learn_bits",),
            )
        self.groups = self._make_groups()
        start = problem.solution(self.w_choice, self.a_choice)
        if not self._fits(start):
            raise UserInputError(
                "the plan does not fit its budgets on this problem: learned bit-widths start "
                "from a plan inside every budget",
                params=("plan",),
            )

    # ---- setup -----------------------------------------------------------------------------
    def _make_groups(self) -> list[BitGroup]:
        p, groups, by_key = self.problem, [], {}
        for k, wg in enumerate(p.weight_groups):
            key = (wg.layer, int(self.w_choice[k]))
            if key not in by_key:
                by_key[key] = len(groups)
                o = key[1]
                groups.append(BitGroup(wg.layer, [], [], o, o - 0.5, p.w_bits[o]))
            g = groups[by_key[key]]
            g.members.append(k)
            g.channels.extend(range(*wg.channels))
        return groups

    @classmethod
    def choice_of_plan(cls, problem: SearchProblem, plan) -> tuple[np.ndarray, np.ndarray]:
        """The problem's option indices of a plan's widths (``UserInputError`` if it has none)."""
        layers = {lp.name: lp for lp in plan.layers}
        w = []
        for wg in problem.weight_groups:
            bits = set(layers[wg.layer].w_bits[wg.channels[0] : wg.channels[1]])
            if len(bits) != 1 or next(iter(bits)) not in problem.w_bits:
                raise UserInputError(
                    f"{wg.layer}: the plan's widths {sorted(bits)} on channels {wg.channels} are "
                    f"not one of the weight options {list(problem.w_bits)} of this granularity: "
                    "pass the wbits and granularity the plan was searched with",
                    params=("wbits", "granularity"),
                )
            w.append(problem.w_bits.index(next(iter(bits))))
        a = []
        for grp in problem.act_groups:
            bits = next(lp.a_bits for lp in plan.layers if lp.act_group == grp)
            if bits not in problem.a_bits:
                raise UserInputError(
                    f"activation group {grp}: the plan's {bits} bits are not among abits "
                    f"{list(problem.a_bits)}",
                    params=("abits",),
                )
            a.append(problem.a_bits.index(bits))
        return np.array(w), np.array(a)

    # ---- the running plan ------------------------------------------------------------------
    def bits_of(self, layer: str, n_channels: int) -> list[int]:
        """Current per-channel widths of ``layer`` (as the learner has moved them)."""
        out = [0] * n_channels
        for k in self.problem.groups_of(layer):
            wg = self.problem.weight_groups[k]
            for c in range(*wg.channels):
                out[c] = self.problem.w_bits[int(self.w_choice[k])]
        return out

    def solution(self) -> Solution:
        return self.problem.solution(self.w_choice, self.a_choice)

    def _fits(self, sol: Solution) -> bool:
        return sol.within(self.problem) and (self.exact_ok is None or self.exact_ok(sol))

    def _usage(self, sol: Solution) -> float:
        return max(sol.totals[r.name] / r.limit for r in self.budgeted)

    def _norm_cost(self, sol: Solution) -> float:
        return sum(sol.totals[r.name] / r.limit for r in self.budgeted)

    def _with(self, g: BitGroup, option: int) -> np.ndarray:
        w = self.w_choice.copy()
        w[g.members] = option
        return w

    def _allowed(self, g: BitGroup, option: int) -> bool:
        n = len(self.problem.w_bits)
        return 0 <= option < n and bool(self.problem.w_allowed[g.members, option].all())

    # ---- probing ---------------------------------------------------------------------------
    def active(self, step: int, total: int) -> bool:
        return step < self.until * total and any(not g.frozen for g in self.groups)

    def pick(self, quantized: Callable[[BitGroup], bool]) -> list[int]:
        """The next ``probes_per_step`` groups (round-robin) that can be probed now."""
        out, n = [], len(self.groups)
        for _ in range(n):
            i = self.cursor % n
            self.cursor += 1
            g = self.groups[i]
            if not g.frozen and quantized(g) and self._probe_option(g) is not None:
                out.append(i)
                if len(out) == self.probes_per_step:
                    break
        return out

    def _probe_option(self, g: BitGroup) -> int | None:
        """One option lower, or one higher at the lowest allowed option."""
        for o in (g.option - 1, g.option + 1):
            if self._allowed(g, o):
                return o
        return None

    def probe_bits(self, i: int) -> tuple[int, int]:
        """(probe option, its bits) of group ``i``."""
        o = self._probe_option(self.groups[i])
        return o, self.problem.w_bits[o]

    def update(self, i: int, loss_now: float, loss_probe: float, step: int) -> int | None:
        """Move group ``i`` from one probe; returns the new bits if its width changed."""
        g = self.groups[i]
        g.probes += 1
        probe_o, _ = self.probe_bits(i)
        lo, hi = min(g.option, probe_o), max(g.option, probe_o)
        now, probe = self.reduce(loss_now), self.reduce(loss_probe)
        gain = (probe - now) if probe_o < g.option else (now - probe)  # loss bought by hi
        sol_lo = self.problem.solution(self._with(g, lo), self.a_choice)
        sol_hi = self.problem.solution(self._with(g, hi), self.a_choice)
        dcost = self._norm_cost(sol_hi) - self._norm_cost(sol_lo)
        if self.lam is None:
            if dcost > 0:
                self.warmup[i] = gain / dcost
            if len(self.warmup) >= sum(1 for x in self.groups if not x.frozen) or g.probes > 1:
                ratios = list(self.warmup.values()) or [0.0]
                self.lam = self.lam0 = max(float(np.median(ratios)), 1e-12)
            return None
        self.lam *= math.exp(DUAL_RATE * (self._usage(self.solution()) - DUAL_TARGET))
        self.lam = min(max(self.lam, self.lam0 / DUAL_RANGE), self.lam0 * DUAL_RANGE)
        d = self.lam * dcost - gain
        scale = abs(gain) + self.lam * abs(dcost)
        if scale <= 0:
            return None
        g.position -= self.eta * max(-1.0, min(1.0, d / scale))
        g.position = min(max(g.position, g.option - 1.0), g.option + 1.0)  # one option a move
        want = math.ceil(g.position - 1e-12)
        if want == g.option:
            return None
        if not self._allowed(g, want):
            g.position = min(max(g.position, g.option - 1.0 + 1e-6), float(g.option))
            return None
        candidate = self.problem.solution(self._with(g, want), self.a_choice)
        if not self._fits(candidate):  # projection: keep the running plan inside
            g.position = float(g.option) if want > g.option else g.option - 0.5
            return None
        if want > g.option:
            g.up_moves[g.option] = g.up_moves.get(g.option, 0) + 1
            g.frozen = g.up_moves[g.option] > self.freeze_after
        g.option = want
        g.position = want - 0.5
        self.w_choice[g.members] = want
        bits = self.problem.w_bits[want]
        g.trajectory.append([int(step), int(bits)])
        return bits

    # ---- on a model ------------------------------------------------------------------------
    def probe(self, model: nn.Module, loss_of: Callable[[], torch.Tensor]) -> list:
        """``(group, loss)`` of this step's probes: ``loss_of()`` (the training loss on the
        step's batch) with one group at its probe width; call before the training forward."""
        layers = _layers(model)

        def quantized(g: BitGroup) -> bool:
            return bool((layers[g.layer].bits_now[g.channels] < 16).all())

        out = []
        for i in self.pick(quantized):
            g, (_, bits) = self.groups[i], self.probe_bits(i)
            with torch.no_grad(), frozen_bn_statistics(model):
                with probed_widths(layers, {g.layer: (g.channels, bits)}):
                    out.append((i, float(loss_of())))
        return out

    def learn(self, model: nn.Module, loss_now: float, probes: list, step: int) -> None:
        """Update the probed groups from this step's loss and move the model's widths."""
        layers = _layers(model)
        for i, loss_probe in probes:
            bits = self.update(i, loss_now, loss_probe, step)
            if bits is not None:
                g, m = self.groups[i], layers[self.groups[i].layer]
                new = m.bits_now.clone()
                new[g.channels] = bits
                m.set_bits(new)

    def apply_phase(self, model: nn.Module, phase) -> None:
        """A schedule phase with the learned widths in place of the planned ones."""
        for name, m in _layers(model).items():
            planned = phase.w_bits[name]
            now = self.bits_of(name, len(planned))
            bits = [c if b < 16 else b for b, c in zip(planned, now, strict=True)]
            m.set_bits(torch.tensor(bits))
            if m.act_quant is not None:
                m.act_quant.set_bits(phase.a_bits[name])

    # ---- state and report ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "w_choice": self.w_choice.tolist(),
            "lam": self.lam,
            "lam0": self.lam0,
            "warmup": {str(k): v for k, v in self.warmup.items()},
            "cursor": self.cursor,
            "groups": [
                {
                    "option": g.option, "position": g.position, "trajectory": g.trajectory,
                    "up_moves": {str(k): v for k, v in g.up_moves.items()},
                    "frozen": g.frozen, "probes": g.probes,
                }
                for g in self.groups
            ],
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.w_choice = np.array(state["w_choice"], dtype=np.int64)
        self.lam, self.lam0, self.cursor = state["lam"], state["lam0"], int(state["cursor"])
        self.warmup = {int(k): float(v) for k, v in state["warmup"].items()}
        for g, s in zip(self.groups, state["groups"], strict=True):
            g.option, g.position, g.frozen = int(s["option"]), float(s["position"]), s["frozen"]
            g.trajectory = [list(t) for t in s["trajectory"]]
            g.up_moves = {int(k): int(v) for k, v in s["up_moves"].items()}
            g.probes = int(s["probes"])

    def report(self) -> dict:
        """What moved: per group start/final bits and trajectory, and the counts."""
        w_bits = self.problem.w_bits
        groups = [
            {
                "layer": g.layer, "channels": len(g.channels), "start_bits": g.start_bits,
                "final_bits": w_bits[g.option], "trajectory": g.trajectory, "frozen": g.frozen,
                "probes": g.probes,
            }
            for g in self.groups
        ]  # fmt: skip
        up = sum(1 for x in groups if x["final_bits"] > x["start_bits"])
        down = sum(1 for x in groups if x["final_bits"] < x["start_bits"])
        sol = self.solution()
        return {
            "groups": groups, "moved_up": up, "moved_down": down,
            "unchanged": len(groups) - up - down, "lambda": self.lam,
            "moves": sum(len(g.trajectory) for g in self.groups),
            "totals": {r.name: sol.totals[r.name] for r in self.budgeted},
            "budgets": {r.name: r.budget for r in self.budgeted},
            "channels_changed": sum(
                len(g.channels) for g in self.groups if w_bits[g.option] != g.start_bits
            ),
        }  # fmt: skip


def _layers(model: nn.Module) -> dict:
    return lsq_layers(getattr(model, "module", model))  # DistributedDataParallel wraps it


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module):
    """Forward passes that leave every BatchNorm's running statistics as they were."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def probed_widths(layers: dict, bits: dict[str, tuple[list[int], int]]):
    """Layers temporarily at other widths (``bits[layer] = (channels, bits)``), their learned
    steps, widths and gradient scales restored afterwards."""
    saved = []
    with torch.no_grad():
        for name, (channels, b) in bits.items():
            m = layers[name]
            saved.append((m, m.w_step.detach().clone(), m.bits_now.clone(), m.w_gscale.clone()))
            new = m.bits_now.clone()
            new[channels] = b
            m.set_bits(new)
    try:
        yield
    finally:
        with torch.no_grad():
            for m, step, now, gscale in saved:
                m.w_step.copy_(step)
                m.bits_now.copy_(now)
                m.w_gscale.copy_(gscale)
