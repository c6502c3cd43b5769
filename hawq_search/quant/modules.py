"""Fake-quant drop-in replacements for Conv2d and Linear.

:class:`QuantConv2d` and :class:`QuantLinear` subclass the torch layers they replace, so
parameter names stay the same (``layer.weight``, ``layer.bias``) and checkpoints of the float
model still load. Each carries its per-output-channel bit-widths and scales as buffers and,
optionally, an :class:`ActQuantizer` for its input; layers reading the same tensor share one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hawq_search.quant.activation import fake_quant_activation
from hawq_search.quant.weight import fake_quant_per_channel, mse_weight_scales

__all__ = ["ActQuantizer", "QuantConv2d", "QuantLinear", "QuantLayer", "mse_scales_for_bits"]


class ActQuantizer(nn.Module):
    """Per-tensor fake quantizer for a layer input; ``bits >= 16`` passes through."""

    def __init__(self, bits: int, clip: float, signed: bool) -> None:
        super().__init__()
        self.bits = int(bits)
        self.signed = bool(signed)
        self.register_buffer("clip", torch.tensor(float(clip)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_activation(x, self.bits, float(self.clip), self.signed)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clip={float(self.clip):.4g}, signed={self.signed}"


def mse_scales_for_bits(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """MSE-optimal scale of each channel at its own bit-width (one solve per distinct width)."""
    bits = bits.to(weight.device)
    scales = torch.ones(weight.shape[0], dtype=torch.float32, device=weight.device)
    for b in sorted(set(bits.tolist())):
        if b >= 16:
            continue
        mask = bits == b
        scales[mask] = mse_weight_scales(weight[mask], int(b))
    return scales


class QuantLayer:
    """Shared behaviour of the fake-quant layers (mixin)."""

    w_bits: torch.Tensor
    w_scale: torch.Tensor
    act_quant: ActQuantizer | None

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        bits: torch.Tensor,
        act: ActQuantizer | None,
        *,
        scales: torch.Tensor | None = None,
    ):
        """Wrap ``layer``'s own parameters (shared, not copied) in the fake-quant subclass;
        ``scales`` (learned by a fine-tune) replace the MSE scales."""
        q = cls.__new__(cls)
        q.__dict__ = layer.__dict__.copy()
        q._parameters = dict(layer._parameters)
        q._buffers = dict(layer._buffers)
        q._modules = dict(layer._modules)
        q._init_quant(bits, act, scales)
        return q

    def _init_quant(
        self, bits: torch.Tensor, act: ActQuantizer | None, scales: torch.Tensor | None = None
    ) -> None:
        self.register_buffer("w_bits", bits.to(self.weight.device, torch.int64).clone())
        if scales is None:
            scales = mse_scales_for_bits(self.weight.detach(), self.w_bits)
        scales = scales.to(self.weight.device, torch.float32).clone()
        self.register_buffer("w_scale", scales)
        self.act_quant = act

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_per_channel(self.weight, self.w_bits, self.w_scale)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x) if self.act_quant is not None else x


class QuantConv2d(QuantLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class QuantLinear(QuantLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)
