"""Fold eval-mode BatchNorms into the convolutions they follow, for the sensitivity pass only.

The Fisher pass needs the gradient of the loss w.r.t. each conv's own output ``y``. With the
BatchNorm after it in eval mode, ``z = a * y + b`` per channel (``a = γ / sqrt(var + ε)``), so
``dL/dy = a * dL/dz``: a copy of the model whose conv computes ``z`` directly (weights ``a * W``,
bias ``a * bias + b``) gives the same gradient after one per-channel multiply, and skips the
BatchNorm's forward and backward, about a tenth of a ResNet's Fisher pass on CPU. Layer inputs,
and so activation sensitivities, are unchanged. Weight perturbations are still taken from the
original weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hawq_search.graph.trace import ModelGraph

__all__ = ["FoldedModel", "fold_batchnorms"]


class FoldedModel:
    """A model copy with BatchNorms folded, and per layer the output-gradient scale ``a``."""

    def __init__(self, model: nn.Module, scales: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.scales = scales

    def output_grad(self, name: str, gy: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. the original layer's output, from the folded layer's."""
        a = self.scales.get(name)
        if a is None:
            return gy
        shape = (1, -1) + (1,) * (gy.dim() - 2)
        return gy * a.to(gy.dtype).reshape(shape)


def _foldable_pairs(model: nn.Module, graph: ModelGraph) -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BatchNorm is the conv output's only reader, reads
    nothing else, keeps running statistics and is called once."""
    modules = dict(model.named_modules())
    g = graph.graph
    calls: dict[str, int] = {}
    for _node, data in g.nodes(data=True):
        if data.get("op") == "call_module":
            calls[data["target"]] = calls.get(data["target"], 0) + 1
    pairs = []
    for layer in graph.layers:
        if layer.op != "conv2d" or layer.name not in g:
            continue
        succ = list(g.successors(layer.name))
        if len(succ) != 1:
            continue
        data = g.nodes[succ[0]]
        bn = modules.get(str(data.get("target")))
        if (
            data.get("op") == "call_module"
            and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats
            and bn.running_var is not None
            and calls.get(data["target"]) == 1
            and list(g.predecessors(succ[0])) == [layer.name]
        ):
            pairs.append((layer.name, str(data["target"])))
    return pairs


@torch.no_grad()
def fold_batchnorms(model: nn.Module, graph: ModelGraph) -> FoldedModel:
    """An eval-mode copy of ``model`` with every foldable conv→BatchNorm pair folded; the
    model itself when nothing folds or it cannot be copied (then every scale is 1)."""
    pairs = _foldable_pairs(model, graph)
    if not pairs:
        return FoldedModel(model, {})
    try:
        folded = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - an uncopyable user model is run unfolded
        return FoldedModel(model, {})
    folded.eval()
    modules = dict(folded.named_modules())
    scales = {}
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)
        a = inv_std * (bn.weight.float() if bn.weight is not None else 1.0)
        shift = -bn.running_mean.float() * a
        if bn.bias is not None:
            shift = shift + bn.bias.float()
        w = conv.weight
        conv.weight = nn.Parameter(
            (w.float() * a.reshape(-1, 1, 1, 1)).to(w.dtype), requires_grad=False
        )
        bias = shift if conv.bias is None else conv.bias.float() * a + shift
        conv.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)
        _replace(folded, bn_name, nn.Identity())
        scales[conv_name] = a
    return FoldedModel(folded, scales)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
