"""Turn a traced model, its sensitivity table and the user's budgets into a :class:`SearchProblem`."""

from __future__ import annotations

import numpy as np

from cost_models.base import CostModel
from cost_models.size import UNQUANTIZED_BITS, channel_bits_cost
from hawq_search.core.exceptions import UserInputError
from hawq_search.core.layers import LayerInfo
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
    raise UserInputError(
        f"granularity {text!r} is not channel, layer or group:N with N >= 1",
        params=("granularity",),
    )


def build_problem(
    graph: ModelGraph,
    table: SensitivityTable,
    *,
    granularity: str = "channel",
    size_budget_bytes: float | None = None,
    bops_budget: float | None = None,
    cost_model: CostModel | None = None,
    latency_budget_s: float | None = None,
    energy_budget_j: float | None = None,
    pinned: dict[str, int] | None = None,
) -> SearchProblem:
    """Weight groups by ``granularity``; resources ``size`` (bytes) and ``bops`` always present
    (their budget may be None, then they are only reported), plus ``latency`` (s) and ``energy``
    (J) under ``cost_model`` when one is given.

    Per-channel plans on an accelerator are costed as one sub-kernel per executed precision (weight
    options with equal ``cost_model.kernel_key`` form one class): each class pays its tiles of
    ``channel_quantum`` channels and one ``cost_model.group_overhead`` (an indicator variable in
    the ILP). That is
    exact for whole layers; for mixed layers the caller re-prices the plan exactly with
    ``cost_model.plan_cost`` (which pads sub-kernels to the array's tiles).
    """
    if cost_model is None and (latency_budget_s is not None or energy_budget_j is not None):
        raise UserInputError(
            "latency_ms and energy_mj need an accelerator to price layers",
            params=("latency_ms", "energy_mj", "accelerator"),
        )
    w_bits, a_bits = table.w_bits, table.a_bits
    groups, allowed = _weight_groups(graph, table, granularity, cost_model, pinned or {})
    act_groups = list(graph.act_groups)
    act_loss = np.array([table.act[g] for g in act_groups]).reshape(len(act_groups), len(a_bits))
    resources = [
        _size_resource(graph, groups, w_bits, size_budget_bytes),
        _bops_resource(graph, w_bits, a_bits, bops_budget),
    ]
    if cost_model is not None:
        resources += accelerator_resources(
            graph, cost_model, w_bits, a_bits, latency_budget_s, energy_budget_j
        )
    return SearchProblem(
        layer_names=tuple(layer.name for layer in graph.layers),
        layer_act_groups=tuple(layer.act_group for layer in graph.layers),
        w_bits=w_bits,
        a_bits=a_bits,
        weight_groups=groups,
        act_groups=act_groups,
        act_loss=act_loss,
        resources=resources,
        w_allowed=allowed,
        meta={"granularity": granularity, "sensitivity": table.method},
    )


def _weight_groups(
    graph: ModelGraph,
    table: SensitivityTable,
    granularity: str,
    cost_model: CostModel | None,
    pinned: dict[str, int],
) -> tuple[list[WeightGroup], np.ndarray]:
    """Groups of channels sharing a width, with their summed losses and allowed options."""
    per_group = parse_granularity(granularity)
    w_bits = table.w_bits
    groups: list[WeightGroup] = []
    allowed_rows = []
    for layer in graph.layers:
        if layer.name not in table.weight:
            raise UserInputError(
                f"the sensitivity table has no entry for layer {layer.name}: recompute it"
            )
        loss = table.weight[layer.name]
        step = per_group or layer.out_channels
        if granularity == "channel" and cost_model is not None:
            # Channels of one compute tile run in one sub-kernel: splitting a tile between bit
            # widths pads every part to a whole tile, so decide per tile ("group:1" forces
            # per-channel decisions anyway).
            step = max(1, min(int(cost_model.channel_quantum(layer)), layer.out_channels))
        allowed = np.ones(len(w_bits), dtype=bool)
        if layer.name in pinned:
            if pinned[layer.name] not in w_bits:
                raise UserInputError(
                    f"pinned bits {pinned[layer.name]} of {layer.name} are not among wbits",
                    params=("wbits",),
                )
            allowed = np.array([b == pinned[layer.name] for b in w_bits])
        for start in range(0, layer.out_channels, step):
            stop = min(start + step, layer.out_channels)
            groups.append(WeightGroup(layer.name, (start, stop), loss[start:stop].sum(axis=0)))
            allowed_rows.append(allowed)
    return groups, np.array(allowed_rows)


def _size_resource(
    graph: ModelGraph, groups: list[WeightGroup], w_bits: tuple[int, ...], budget: float | None
) -> Resource:
    """Stored bytes, exact to the byte (see ``cost_models.size``)."""
    layers = {layer.name: layer for layer in graph.layers}
    rows = [[g.count * channel_bits_cost(layers[g.layer], b) for b in w_bits] for g in groups]
    # A layer rounds its packed bits up to whole bytes: exact with one integer per layer whose
    # options do not all pack whole bytes (the stem convolution, depthwise layers).
    round_up = {
        layer.name: np.array(
            [0.0 if b in UNQUANTIZED_BITS else layer.params_per_channel * b / 8 for b in w_bits]
        )
        for layer in graph.layers
        if any(layer.params_per_channel * b % 8 for b in w_bits if b not in UNQUANTIZED_BITS)
    }
    return Resource(
        "size", "bytes", budget, weight=np.array(rows), round_up=round_up,
        round_reserve=_byte_reserve(budget, len(round_up)),
    )  # fmt: skip


def _bops_resource(
    graph: ModelGraph, w_bits: tuple[int, ...], a_bits: tuple[int, ...], budget: float | None
) -> Resource:
    """Bit-operations per image: MACs per channel x weight bits x activation bits."""
    pair = {
        layer.name: layer.macs_per_channel * np.outer(w_bits, a_bits).astype(float)
        for layer in graph.layers
    }
    return Resource("bops", "bit-ops", budget, pair=pair)


def _byte_reserve(budget: float | None, rounded_layers: int) -> float | None:
    """Reserve that makes the un-rounded size constraint exact, when one exists.

    Everything but the rounded layers' packed bits is whole bytes, so with one rounded layer
    (a ResNet's stem) ``ceil(s) + R <= B  <=>  s + R <= floor(B)``: a linear constraint with
    ``B - floor(B)`` reserved, no integer variable. With several (depthwise layers) no reserve
    is both safe and exact: None, and the ILP models each rounding with an integer.
    """
    if budget is None or rounded_layers > 1:
        return None
    return float(budget - np.floor(budget))


def accelerator_resources(
    graph: ModelGraph,
    cost_model: CostModel,
    w_bits: tuple[int, ...],
    a_bits: tuple[int, ...],
    latency_budget_s: float | None,
    energy_budget_j: float | None,
) -> list[Resource]:
    """Latency and energy resources: a cost per tile of ``channel_quantum`` output channels per
    (w, a) pair, plus one overhead per used bit-width group."""
    lat_pair, en_pair, lat_ovh, en_ovh, quantum, classes = {}, {}, {}, {}, {}, {}
    for layer in graph.layers:
        q = max(1, min(int(cost_model.channel_quantum(layer)), layer.out_channels))
        units = -(-layer.out_channels // q)
        over = cost_model.group_overhead(layer)
        lat = np.zeros((len(w_bits), len(a_bits)))
        en = np.zeros_like(lat)
        for i, wb in enumerate(w_bits):
            for j, ab in enumerate(a_bits):
                # Cost of one tile of q channels beyond the overhead: whole-layer cost is exact.
                c = cost_model.layer_cost(layer, wb, ab)
                lat[i, j] = max(c.latency_s - over.latency_s, 0.0) / units
                en[i, j] = max(c.energy_j - over.energy_j, 0.0) / units
        lat_pair[layer.name], en_pair[layer.name], quantum[layer.name] = lat, en, q
        classes[layer.name] = kernel_classes(cost_model, layer, w_bits, a_bits, lat, en)
        if over.latency_s > 0:
            lat_ovh[layer.name] = np.full(len(w_bits), over.latency_s)
        if over.energy_j > 0:
            en_ovh[layer.name] = np.full(len(w_bits), over.energy_j)
    common = {"quantum": quantum, "classes": classes}
    fixed = cost_model.fixed_cost(graph.layers)  # non-quantizable ops: the same for every plan
    return [
        Resource(
            "latency", "s", latency_budget_s, pair=lat_pair, overhead=lat_ovh,
            constant=fixed.latency_s, **common,
        ),
        Resource(
            "energy", "J", energy_budget_j, pair=en_pair, overhead=en_ovh,
            constant=fixed.energy_j, **common,
        ),
    ]  # fmt: skip


def kernel_classes(
    cost_model: CostModel,
    layer: LayerInfo,
    w_bits: tuple[int, ...],
    a_bits: tuple[int, ...],
    lat: np.ndarray,
    en: np.ndarray,
) -> tuple[int, ...]:
    """Class id per weight option: options that run in one kernel under every activation option
    (equal ``kernel_key``) and cost the same per tile share tiles and one overhead, as in
    ``CostModel.plan_cost``. Requiring both keeps the ILP's cost exact or above it."""
    ids: dict[tuple, int] = {}
    out = []
    for i, wb in enumerate(w_bits):
        sig = (
            tuple(cost_model.kernel_key(layer, wb, ab) for ab in a_bits),
            tuple(lat[i]),
            tuple(en[i]),
        )
        out.append(ids.setdefault(sig, len(ids)))
    return tuple(out)
