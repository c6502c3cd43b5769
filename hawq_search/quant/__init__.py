"""Fake quantizers for weights (per channel) and activations (per tensor)."""

from hawq_search.quant.activation import ActStats, fake_quant_activation, quantize_activation
from hawq_search.quant.modules import ActQuantizer, QuantConv2d, QuantLinear
from hawq_search.quant.weight import (
    QUANT_BITS,
    fake_quant_per_channel,
    is_quantized,
    mse_weight_scales,
    quantize_per_channel,
)

__all__ = [
    "QUANT_BITS",
    "ActQuantizer",
    "ActStats",
    "QuantConv2d",
    "QuantLinear",
    "fake_quant_activation",
    "fake_quant_per_channel",
    "is_quantized",
    "mse_weight_scales",
    "quantize_activation",
    "quantize_per_channel",
]
