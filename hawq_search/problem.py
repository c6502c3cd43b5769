"""Turn a traced model, its sensitivity table and the user's budgets into a :class:`SearchProblem`."""

from __future__ import annotations

import numpy as np

from cost_models.size import channel_bits_cost
from hawq_search.exceptions import UserInputError
from hawq_search.graph.trace import ModelGraph
from hawq_search.sensitivity.table import SensitivityTable
from searches.problem import Resource, SearchProblem, WeightGroup

__all__ = ["parse_granularity", "build_problem"]


def parse_granularity(text: str) -> int | None:
    """Channels per weight group: ``channel`` -> 1, ``group:N`` -> N, ``layer`` -> None (all)."""
    if text == "channel":
        return 1
    if text == "layer":
        return None
    if text.startswith("group:"):
        try:
            n = int(text.split(":", 1)[1])
        except ValueError:
            n = 0
        if n >= 1:
            return n
    raise UserInputError(f"--granularity {text!r} is not channel, layer or group:N with N >= 1")


def build_problem(
    graph: ModelGraph,
    table: SensitivityTable,
    *,
    granularity: str = "channel",
    size_budget_bytes: float | None = None,
    bops_budget: float | None = None,
    pinned: dict[str, int] | None = None,
) -> SearchProblem:
    """Weight groups by ``granularity``; resources ``size`` (bytes) and ``bops`` always present
    (their budget may be None, then they are only reported)."""
    per_group = parse_granularity(granularity)
    w_bits, a_bits = table.w_bits, table.a_bits
    groups: list[WeightGroup] = []
    size_rows = []
    allowed_rows = []
    pinned = pinned or {}
    for layer in graph.layers:
        if layer.name not in table.weight:
            raise UserInputError(
                f"the sensitivity table has no entry for layer {layer.name}: recompute it"
            )
        loss = table.weight[layer.name]
        step = per_group or layer.out_channels
        allowed = np.ones(len(w_bits), dtype=bool)
        if layer.name in pinned:
            if pinned[layer.name] not in w_bits:
                raise UserInputError(
                    f"pinned bits {pinned[layer.name]} of {layer.name} are not among --wbits"
                )
            allowed = np.array([b == pinned[layer.name] for b in w_bits])
        for start in range(0, layer.out_channels, step):
            stop = min(start + step, layer.out_channels)
            groups.append(WeightGroup(layer.name, (start, stop), loss[start:stop].sum(axis=0)))
            size_rows.append([(stop - start) * channel_bits_cost(layer, b) for b in w_bits])
            allowed_rows.append(allowed)
    act_groups = list(graph.act_groups)
    act_loss = np.array([table.act[g] for g in act_groups]).reshape(len(act_groups), len(a_bits))
    size = Resource(
        "size",
        "bytes",
        size_budget_bytes,
        weight=np.array(size_rows),
        slack=float(len(graph.layers)),  # each layer rounds up to whole bytes
    )
    bops = Resource(
        "bops",
        "bit-ops",
        bops_budget,
        pair={
            layer.name: layer.macs_per_channel * np.outer(w_bits, a_bits).astype(float)
            for layer in graph.layers
        },
    )
    return SearchProblem(
        layers=graph.layers,
        w_bits=w_bits,
        a_bits=a_bits,
        weight_groups=groups,
        act_groups=act_groups,
        act_loss=act_loss,
        resources=[size, bops],
        w_allowed=np.array(allowed_rows),
    )
