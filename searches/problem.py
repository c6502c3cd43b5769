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
    constant: float = 0.0  # cost independent of the decisions
    slack: float = 0.0  # reserved from the budget (e.g. per-layer rounding to whole bytes)


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
            for layer, per_unit in r.pair.items():
                j = a_choice[self.act_index[self.layer_by_name[layer].act_group]]
                q = r.quantum.get(layer, 1)
                counts: dict[int, int] = {}
                for k in self.groups_of(layer):
                    i = int(w_choice[k])
                    counts[i] = counts.get(i, 0) + self.weight_groups[k].count
                for i, n in counts.items():
                    total += float(per_unit[i, j] * -(-n // q))
            for layer, ovh in r.overhead.items():
                used = {int(w_choice[k]) for k in self.groups_of(layer)}
                total += float(sum(ovh[i] for i in used))
            totals[r.name] = total
        return obj, totals
