"""Taps for channel-attention feature distillation (BAG / AKT): the feature maps of a model's
top-level stages, captured by forward hooks so any architecture works without changes.

A tap is each direct child of the model whose output is a 4-D feature map (for CIFAR and
torchvision ResNets: the stem and ``layer1`` ... ``layer4``); student and teacher are the same
architecture, so their taps pair up one to one.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeatureTaps"]


class FeatureTaps:
    """The latest forward pass's feature maps of ``model``'s top-level children."""

    def __init__(self, model: nn.Module) -> None:
        self.features: list[torch.Tensor] = []
        root = getattr(model, "module", model)  # DistributedDataParallel wraps it
        self._handles = [root.register_forward_pre_hook(self._reset)]
        self._handles += [m.register_forward_hook(self._keep) for m in root.children()]

    def _reset(self, module, args) -> None:
        self.features = []

    def _keep(self, module, args, output) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            self.features.append(output)

    def take(self) -> list[torch.Tensor]:
        out, self.features = self.features, []
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
