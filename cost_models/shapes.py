"""The GEMM view of a layer (or of a sub-kernel computing some of its output channels).

Every analytic law in ``analytic.py`` is written over the implicit-GEMM sizes
M = B*H_o*W_o (output positions), K = (C_i/g)*k_h*k_w (reduction) and N = C_o/g (output channels
per group), repeated for ``groups`` groups; this module computes them once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hawq_search.core.layers import LayerInfo

__all__ = ["Gemm", "gemm_of"]


@dataclass(frozen=True)
class Gemm:
    """Sizes of one (sub-)kernel for a batch of ``batch`` samples."""

    batch: int
    m: int  # output positions, batch included
    k: int  # reduction length per output
    n: int  # output channels per group
    groups: int  # groups this kernel touches (channels for depthwise)
    out_channels: int  # output channels this kernel computes
    macs: int  # whole batch
    n_weights: int
    n_inputs: int  # input activation elements read, whole batch
    n_outputs: int  # output activation elements written, whole batch


def _positions(shape: tuple[int, ...], channels: int) -> int:
    """Spatial positions per sample: H*W for (C, H, W), tokens for (..., C), 1 for (C,)."""
    total = math.prod(shape) if shape else channels
    return max(1, total // max(1, channels))


def gemm_of(layer: LayerInfo, batch: int, out_channels: int | None = None) -> Gemm:
    """GEMM sizes of ``layer`` restricted to ``out_channels`` output channels (default: all)."""
    n_out = layer.out_channels if out_channels is None else out_channels
    g = max(1, layer.groups)
    c_out_per_group = max(1, layer.out_channels // g)
    if g == 1:
        groups, n = 1, n_out
        in_fraction = 1.0
    else:
        groups = math.ceil(n_out / c_out_per_group)
        n = min(n_out, c_out_per_group)
        in_fraction = groups / g
    kh, kw = layer.kernel_size if layer.op == "conv2d" else (1, 1)
    k = (layer.in_channels // g) * kh * kw
    positions_out = _positions(layer.output_shape, layer.out_channels)
    positions_in = _positions(layer.input_shape, layer.in_channels)
    return Gemm(
        batch=batch,
        m=batch * positions_out,
        k=k,
        n=n,
        groups=groups,
        out_channels=n_out,
        macs=batch * layer.macs_per_channel * n_out,
        n_weights=layer.params_per_channel * n_out,
        n_inputs=round(batch * positions_in * layer.in_channels * in_fraction),
        n_outputs=batch * positions_out * n_out,
    )
