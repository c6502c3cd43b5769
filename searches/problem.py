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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hawq_search.graph.layers import LayerInfo

__all__ = ["WeightGroup", "Resource", "SearchProblem"]


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


@dataclass
class SearchProblem:
    layers: list[LayerInfo]
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    weight_groups: list[WeightGroup]
    act_groups: list[str]
    act_loss: np.ndarray  # (n_act_groups, n_a_bits)
    resources: list[Resource]
    w_allowed: np.ndarray | None = None  # (n_weight_groups, n_w_bits) bool; None = all allowed
    a_allowed: np.ndarray | None = None  # (n_act_groups, n_a_bits) bool

    def __post_init__(self) -> None:
        self.layer_by_name = {layer.name: layer for layer in self.layers}
        self.act_index = {g: i for i, g in enumerate(self.act_groups)}
        if self.w_allowed is None:
            self.w_allowed = np.ones((len(self.weight_groups), len(self.w_bits)), dtype=bool)
        if self.a_allowed is None:
            self.a_allowed = np.ones((len(self.act_groups), len(self.a_bits)), dtype=bool)

    def groups_of(self, layer: str) -> list[int]:
        return [i for i, g in enumerate(self.weight_groups) if g.layer == layer]

    def resource(self, name: str) -> Resource | None:
        return next((r for r in self.resources if r.name == name), None)

    def evaluate(
        self, w_choice: np.ndarray, a_choice: np.ndarray
    ) -> tuple[float, dict[str, float]]:
        """Objective and resource totals of a choice (option indices), computed directly.

        The independent check of what a solver claims: no linearisation involved.
        """
        obj = float(sum(g.loss[i] for g, i in zip(self.weight_groups, w_choice, strict=True)))
        obj += float(sum(self.act_loss[k, j] for k, j in enumerate(a_choice)))
        totals = {}
        for r in self.resources:
            total = r.constant
            if r.weight is not None:
                total += float(sum(r.weight[k, i] for k, i in enumerate(w_choice)))
            if r.act is not None:
                total += float(sum(r.act[k, j] for k, j in enumerate(a_choice)))
            nw = len(self.w_bits)
            for layer, per_unit in r.pair.items():
                j = a_choice[self.act_index[self.layer_by_name[layer].act_group]]
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
            totals[r.name] = total
        return obj, totals


def _ceil(amount: float) -> int:
    """``ceil`` that ignores float noise below 1e-9 of a unit (sums of multiples of 1/8)."""
    return int(np.ceil(amount - 1e-9))
