"""Trace a model with torch.fx into a networkx graph of its quantizable layers.

The graph gives each Conv2d/Linear its shapes, parameter count and MACs for one sample, and
groups layers that read the same tensor: such layers share one activation quantizer and so must
share its bit-width (e.g. a ResNet-50 block's ``conv1`` and ``downsample.0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from hawq_search.core.exceptions import UnsupportedLayerError, UnsupportedModelError
from hawq_search.core.layers import LayerInfo

QUANTIZABLE = (nn.Conv2d, nn.Linear)

__all__ = ["ModelGraph", "trace_model", "QUANTIZABLE"]


@dataclass
class ModelGraph:
    """Quantizable layers in execution order, their activation groups and the full data-flow graph."""

    layers: list[LayerInfo]
    graph: nx.DiGraph
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.by_name = {layer.name: layer for layer in self.layers}
        groups: dict[str, list[str]] = {}
        for layer in self.layers:
            groups.setdefault(layer.act_group, []).append(layer.name)
        self.act_groups = groups

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def quantizable_predecessors(self, name: str) -> list[str]:
        """Nearest quantizable layers upstream of ``name`` (through non-quantizable ops)."""
        found, stack, seen = [], list(self.graph.predecessors(name)), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in self.by_name:
                found.append(node)
            else:
                stack.extend(self.graph.predecessors(node))
        return sorted(found, key=lambda n: self.by_name[n].index)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _resolve_padding(name: str, mod: nn.Conv2d) -> tuple[int, int]:
    """Numeric (symmetric) padding of a conv, resolving ``"valid"`` and ``"same"``."""
    if mod.padding == "valid":
        return (0, 0)
    if mod.padding == "same":
        total = [
            d * (k - 1) for d, k in zip(_pair(mod.dilation), _pair(mod.kernel_size), strict=True)
        ]
        if any(t % 2 for t in total):
            raise UnsupportedLayerError(
                f"layer {name}: padding='same' with an even kernel pads asymmetrically; give numeric padding"
            )
        return (total[0] // 2, total[1] // 2)
    return _pair(mod.padding)


def _layer_info(name: str, mod: nn.Module, x_shape, y_shape, group: str, index: int) -> LayerInfo:
    w = mod.weight
    params = w.numel()
    in_shape = tuple(int(s) for s in x_shape[1:])
    out_shape = tuple(int(s) for s in y_shape[1:])
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"layer {name} pads with {mod.padding_mode!r}; only zero padding is supported"
            )
        padding = _resolve_padding(name, mod)
        spatial = out_shape[-1] * out_shape[-2]
        macs = params * spatial
        return LayerInfo(
            name=name,
            op="conv2d",
            in_channels=mod.in_channels,
            out_channels=mod.out_channels,
            kernel_size=_pair(mod.kernel_size),
            stride=_pair(mod.stride),
            padding=padding,
            groups=mod.groups,
            input_shape=in_shape,
            output_shape=out_shape,
            weight_shape=tuple(w.shape),
            has_bias=mod.bias is not None,
            params=params,
            macs=macs,
            act_group=group,
            index=index,
            dilation=_pair(mod.dilation),
        )
    positions = 1
    for s in out_shape[:-1]:
        positions *= s
    return LayerInfo(
        name=name,
        op="linear",
        in_channels=mod.in_features,
        out_channels=mod.out_features,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        groups=1,
        input_shape=in_shape,
        output_shape=out_shape,
        weight_shape=tuple(w.shape),
        has_bias=mod.bias is not None,
        params=params,
        macs=params * positions,
        act_group=group,
        index=index,
    )


def trace_model(model: nn.Module, example: torch.Tensor) -> ModelGraph:
    """Symbolically trace ``model`` and propagate ``example`` (batch of 1) through it."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); make forward() free of "
            "data-dependent Python control flow"
        ) from None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    model.train(was_training)

    g = nx.DiGraph()
    modules = dict(gm.named_modules())
    layers: list[LayerInfo] = []
    seen_modules: set[str] = set()
    for node in gm.graph.nodes:
        g.add_node(node.name, op=node.op, target=str(node.target))
        for inp in node.all_input_nodes:
            g.add_edge(inp.name, node.name)
        if node.op != "call_module" or not isinstance(modules.get(node.target), QUANTIZABLE):
            continue
        target = str(node.target)
        if target in seen_modules:
            raise UnsupportedModelError(
                f"layer {target} is called more than once; per-call bit-widths are not supported"
            )
        seen_modules.add(target)
        src = node.args[0]
        x_meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
        y_meta = node.meta.get("tensor_meta")
        if x_meta is None or y_meta is None:
            raise UnsupportedModelError(f"no shape could be propagated to layer {target}")
        group = f"act:{src.name}"
        layers.append(
            _layer_info(target, modules[target], x_meta.shape, y_meta.shape, group, len(layers))
        )
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no Conv2d or Linear layer to quantize"
        )
    # Relabel quantizable nodes by module name, so graph queries use the names plans use.
    mapping = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in seen_modules:
            mapping[node.name] = str(node.target)
    g = nx.relabel_nodes(g, mapping)
    for layer in layers:
        g.nodes[layer.name]["layer"] = layer
    return ModelGraph(layers=layers, graph=g, input_shape=tuple(example.shape[1:]))
