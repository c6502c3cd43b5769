"""Bit-width conventions shared by quantizers, plans and cost models."""

from __future__ import annotations

# 16 and 32 mean "not quantized": fp16 / fp32 storage, no scale.
UNQUANTIZED_BITS = (16, 32)
QUANT_BITS = (2, 3, 4, 5, 6, 7, 8)
ALLOWED_BITS = QUANT_BITS + UNQUANTIZED_BITS


def is_quantized(bits: int) -> bool:
    return bits not in UNQUANTIZED_BITS
