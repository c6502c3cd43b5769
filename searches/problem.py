"""The search problem every solver works on: choose one bit option per weight group and per
activation group, minimising predicted loss increase subject to resource budgets.

Resources are additive over layers. A resource can charge

* ``weight``: a cost per weight group and bit option (e.g. stored bytes);
* ``act``: a cost per activation group and bit option;
* ``pair``: a cost per output channel of a layer (or per tile of ``quantum`` channels, rounded
  up per bit option) that depends on both the channel's weight bits and the layer's activation
  bits (e.g. BOPs = MACs_c * w * a, or a latency table);
* ``overhead``: a fixed cost per layer and weight-bit option that is used by at least one of
  its channels (e.g. one extra kernel launch per bit-width group).

``round_up`` makes a resource exact where a layer rounds a sum up to whole units (bytes): per
layer and weight option, the amount one channel adds to that sum (e.g. packed bits / 8); the
resource charges ``ceil(sum) - sum`` on top of the fractional amounts already in ``weight``.

``classes`` merges weight options of a layer that run in one kernel (e.g. W2..W8 on int8-only
hardware): tiles and overheads are then counted per class, over the channels of all its options,
and the options of a class must have equal ``pair`` and ``overhead`` costs.

A problem holds names, arrays and budgets only (no model, no torch): :meth:`SearchProblem.save`
writes it to one ``.npz`` file that :meth:`SearchProblem.load` reads back on any machine, so a
worker process can solve it without the model or the data.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["WeightGroup", "Resource", "SearchProblem", "Solution", "PROBLEM_FORMAT_VERSION"]

PROBLEM_FORMAT_VERSION = 1


@dataclass(frozen=True)
class WeightGroup:
    """Output channels of one layer that must share a weight bit-width."""

    layer: str
    channels: tuple[int, int]  # [start, stop) of contiguous output channels
    loss: np.ndarray  # predicted loss increase per weight bit option, summed over the channels

    @property
    def count(self) -> int:
        return self.channels[1] - self.channels[0]


@dataclass
class Resource:
    """One budgeted quantity. Arrays are indexed like the problem's groups and bit options."""

    name: str
    unit: str
    budget: float | None
    weight: np.ndarray | None = None  # (n_weight_groups, n_w_bits)
    act: np.ndarray | None = None  # (n_act_groups, n_a_bits)
    # layer -> (n_w_bits, n_a_bits) cost per unit: one channel, or one tile of quantum[layer]
    pair: dict[str, np.ndarray] = field(default_factory=dict)
    quantum: dict[str, int] = field(default_factory=dict)  # layer -> channels per unit (default 1)
    overhead: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (n_w_bits,)
    # layer -> class id per weight option (options sharing a kernel); default: one class each
    classes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    constant: float = 0.0  # cost independent of the decisions
    slack: float = 0.0  # reserved from the budget
    round_up: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (n_w_bits,)
    # Reserve that makes the linear (un-rounded) constraint imply the rounded one; None: always
    # model the rounding with integers. Solvers try it first: integers slow branch-and-bound.
    round_reserve: float | None = None

    def classes_of(self, layer: str, n_options: int) -> tuple[int, ...]:
        return self.classes.get(layer, tuple(range(n_options)))

    @property
    def limit(self) -> float | None:
        """What the decisions may add up to: the budget less the constant and the slack."""
        return None if self.budget is None else self.budget - self.constant - self.slack


@dataclass(frozen=True)
class Solution:
    """One plan of a problem: the option chosen per group, its predicted loss increase and its
    resource totals (recomputed by :meth:`SearchProblem.solution`, never taken from a solver),
    and the bit-widths it gives every layer's channels and every activation group."""

    w_choice: np.ndarray  # option index per weight group
    a_choice: np.ndarray  # option index per activation group
    objective: float
    totals: dict[str, float]
    layer_bits: dict[str, tuple[int, ...]]  # layer -> weight bits of each output channel
    act_bits: dict[str, int]  # activation group -> bits
    group_bits: tuple[int, ...] = ()  # weight bits of each weight group, in problem order

    def within(self, problem: SearchProblem, rel_tol: float = 1e-9) -> bool:
        """Whether every budgeted total is within its budget (less its slack)."""
        return all(
            r.budget is None or self.totals[r.name] <= (r.budget - r.slack) * (1 + rel_tol)
            for r in problem.resources
        )


@dataclass
class SearchProblem:
    """Choose one weight option per weight group and one activation option per activation
    group, minimising the summed predicted loss increase within every resource budget.

    ``layer_names`` are in execution order; ``layer_act_groups[i]`` names the activation group
    feeding layer ``i`` (its bits multiply that layer's pair costs). ``meta`` is free JSON data
    the builder records (model, granularity, ...); solvers ignore it.
    """

    layer_names: tuple[str, ...]
    layer_act_groups: tuple[str, ...]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    weight_groups: list[WeightGroup]
    act_groups: list[str]
    act_loss: np.ndarray  # (n_act_groups, n_a_bits)
    resources: list[Resource]
    w_allowed: np.ndarray | None = None  # (n_weight_groups, n_w_bits) bool; None = all allowed
    a_allowed: np.ndarray | None = None  # (n_act_groups, n_a_bits) bool
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer_names = tuple(self.layer_names)
        self.layer_act_groups = tuple(self.layer_act_groups)
        self.w_bits, self.a_bits = tuple(self.w_bits), tuple(self.a_bits)
        if len(self.layer_names) != len(self.layer_act_groups):
            raise ValueError("layer_names and layer_act_groups differ in length")
        self.layer_index = {name: i for i, name in enumerate(self.layer_names)}
        self.act_group_of = dict(zip(self.layer_names, self.layer_act_groups, strict=True))
        self.act_index = {g: i for i, g in enumerate(self.act_groups)}
        self._groups_by_layer: dict[str, list[int]] = {}
        for k, g in enumerate(self.weight_groups):
            self._groups_by_layer.setdefault(g.layer, []).append(k)
        if self.w_allowed is None:
            self.w_allowed = np.ones((len(self.weight_groups), len(self.w_bits)), dtype=bool)
        if self.a_allowed is None:
            self.a_allowed = np.ones((len(self.act_groups), len(self.a_bits)), dtype=bool)

    def groups_of(self, layer: str) -> list[int]:
        return self._groups_by_layer.get(layer, [])

    def resource(self, name: str) -> Resource | None:
        return next((r for r in self.resources if r.name == name), None)

    def objective_and_totals(
        self, w_choice: np.ndarray, a_choice: np.ndarray
    ) -> tuple[float, dict[str, float]]:
        """Objective and resource totals of a choice (option indices), computed directly.

        The independent check of what a solver claims: no linearisation involved.
        """
        obj = float(sum(g.loss[i] for g, i in zip(self.weight_groups, w_choice, strict=True)))
        obj += float(sum(self.act_loss[k, j] for k, j in enumerate(a_choice)))
        return obj, {r.name: self._total(r, w_choice, a_choice) for r in self.resources}

    def _total(self, r: Resource, w_choice: np.ndarray, a_choice: np.ndarray) -> float:
        total = r.constant
        if r.weight is not None:
            total += float(sum(r.weight[k, i] for k, i in enumerate(w_choice)))
        if r.act is not None:
            total += float(sum(r.act[k, j] for k, j in enumerate(a_choice)))
        nw = len(self.w_bits)
        for layer, per_unit in r.pair.items():
            j = a_choice[self.act_index[self.act_group_of[layer]]]
            q = r.quantum.get(layer, 1)
            cls = r.classes_of(layer, nw)
            counts: dict[int, int] = {}
            for k in self.groups_of(layer):
                c = cls[int(w_choice[k])]
                counts[c] = counts.get(c, 0) + self.weight_groups[k].count
            for c, n in counts.items():
                total += float(per_unit[cls.index(c), j] * -(-n // q))
        for layer, per_channel in r.round_up.items():
            amount = sum(
                self.weight_groups[k].count * per_channel[int(w_choice[k])]
                for k in self.groups_of(layer)
            )
            total += float(_ceil(amount) - amount)
        for layer, ovh in r.overhead.items():
            cls = r.classes_of(layer, nw)
            used = {cls[int(w_choice[k])] for k in self.groups_of(layer)}
            total += float(sum(ovh[cls.index(c)] for c in used))
        return total

    def solution(self, w_choice, a_choice) -> Solution:
        """The :class:`Solution` of a choice, with objective and totals recomputed here."""
        w = np.asarray(w_choice, dtype=np.int64)
        a = np.asarray(a_choice, dtype=np.int64)
        if w.shape != (len(self.weight_groups),) or a.shape != (len(self.act_groups),):
            raise ValueError(
                f"a choice needs {len(self.weight_groups)} weight and {len(self.act_groups)} "
                f"activation option indices, got shapes {w.shape} and {a.shape}"
            )
        obj, totals = self.objective_and_totals(w, a)
        channels: dict[str, list[int]] = {}
        for g, i in zip(self.weight_groups, w, strict=True):
            channels.setdefault(g.layer, []).extend([self.w_bits[i]] * g.count)
        return Solution(
            w_choice=w,
            a_choice=a,
            objective=obj,
            totals=totals,
            layer_bits={name: tuple(bits) for name, bits in channels.items()},
            act_bits={g: self.a_bits[j] for g, j in zip(self.act_groups, a, strict=True)},
            group_bits=tuple(self.w_bits[i] for i in w),
        )

    # ---- variants ----------------------------------------------------------------------------
    def with_budgets(self, budgets: Mapping[str, float | None]) -> SearchProblem:
        """A copy whose resources named in ``budgets`` get those budgets (None: unbudgeted)."""
        unknown = set(budgets) - {r.name for r in self.resources}
        if unknown:
            raise ValueError(f"no resource named {', '.join(sorted(unknown))}")
        out = copy.copy(self)
        out.resources = [
            replace(r, budget=budgets[r.name]) if r.name in budgets else r for r in self.resources
        ]
        out.__post_init__()
        return out

    def rescaled(
        self, layer_scale: Mapping[str, float], act_scale: Mapping[str, float] | None = None
    ) -> SearchProblem:
        """A copy whose predicted losses are multiplied per layer (every weight group of the
        layer) and per activation group; costs and budgets are shared, not copied. Layers and
        groups not named keep their losses."""
        out = copy.copy(self)
        out.weight_groups = [
            replace(g, loss=g.loss * float(layer_scale[g.layer])) if g.layer in layer_scale else g
            for g in self.weight_groups
        ]
        act_scale = act_scale or {}
        factors = np.array([float(act_scale.get(g, 1.0)) for g in self.act_groups])
        out.act_loss = np.asarray(self.act_loss, dtype=float) * factors.reshape(-1, 1)
        out.__post_init__()
        return out

    def fingerprint(self) -> str:
        """SHA-256 of losses, costs, budgets and allowed options (not ``meta``)."""
        from searches._problem_file import problem_fingerprint

        return problem_fingerprint(self)

    # ---- file round trip ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the problem to one ``.npz`` file (no pickles), atomically."""
        from searches._problem_file import write_problem

        write_problem(self, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchProblem:
        """Read a problem written by :meth:`save` (``ValueError`` on a file that is not one)."""
        from searches._problem_file import read_problem

        return read_problem(Path(path))


def _ceil(amount: float) -> int:
    """``ceil`` that ignores float noise below 1e-9 of a unit (sums of multiples of 1/8)."""
    return int(np.ceil(amount - 1e-9))
