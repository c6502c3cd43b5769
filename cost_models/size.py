"""Stored-weight size and bit-operations of a layer: the accounting every budget in hawq-search uses.

Size of one quantizable layer, in bytes (``--budget-mb`` counts 10**6 of these):

* quantized channels (2..8 bits): ``ceil(sum_c params_per_channel * bits_c / 8)`` -- weights are
  packed densely per layer -- plus ``SCALE_BYTES`` (an fp32 scale) per quantized output channel;
* unquantized channels (16 or 32 bits): fp16 or fp32 weights, no scale;
* every output channel also stores an fp32 bias (``BIAS_BYTES``): the layer's own bias or the
  BatchNorm shift that folding moves into it. BatchNorm scales fold into the weights and cost
  nothing extra.

Bit-operations follow HAWQ-V3 / AIMET: ``BOPs = MACs * w_bits * a_bits`` (no normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hawq_search.core.bits import UNQUANTIZED_BITS
from hawq_search.core.layers import LayerInfo

SCALE_BYTES = 4
BIAS_BYTES = 4

__all__ = [
    "SCALE_BYTES",
    "BIAS_BYTES",
    "UNQUANTIZED_BITS",
    "channel_bits_cost",
    "layer_weight_bytes",
    "layer_bops",
]


def channel_bits_cost(layer: LayerInfo, bits: int) -> float:
    """Bytes one output channel costs at ``bits``, before the per-layer rounding up to whole bytes.

    Linear in the channel count, so the ILP can use it directly; the per-layer ``ceil`` (< 1
    byte) is modelled exactly by one integer per layer (``Resource.round_up``).
    """
    meta = BIAS_BYTES if bits in UNQUANTIZED_BITS else SCALE_BYTES + BIAS_BYTES
    return layer.params_per_channel * bits / 8 + meta


def layer_weight_bytes(layer: LayerInfo, channel_bits: Sequence[int]) -> int:
    """Exact stored bytes of ``layer`` when output channel ``c`` has ``channel_bits[c]`` bits."""
    if len(channel_bits) != layer.out_channels:
        raise ValueError(
            f"{layer.name}: {len(channel_bits)} channel bit-widths for {layer.out_channels} channels"
        )
    ppc = layer.params_per_channel
    quant_bits = sum(ppc * b for b in channel_bits if b not in UNQUANTIZED_BITS)
    n_quant = sum(1 for b in channel_bits if b not in UNQUANTIZED_BITS)
    float_bytes = sum(ppc * b // 8 for b in channel_bits if b in UNQUANTIZED_BITS)
    return (
        math.ceil(quant_bits / 8)
        + float_bytes
        + n_quant * SCALE_BYTES
        + layer.out_channels * BIAS_BYTES
    )


def layer_bops(layer: LayerInfo, channel_bits: Sequence[int], act_bits: int) -> int:
    """Bit-operations of one forward pass of one sample: ``sum_c MACs_c * w_bits_c * a_bits``."""
    mpc = layer.macs_per_channel
    return int(sum(mpc * b for b in channel_bits) * act_bits)
