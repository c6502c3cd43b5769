"""Learned step size quantization (LSQ, Esser et al. 2020) on top of the PTQ quantizers.

The forward pass is the one :func:`hawq_search.plan.apply_plan` builds: weights symmetric per
output channel on the narrow grid ``[-(2^(b-1)-1), 2^(b-1)-1]`` (so a trained step is a valid
``w_scale`` of the plan and the rebuilt model computes the same numbers), activations per tensor,
unsigned ``[0, 2^b-1]`` after ReLU and signed narrow otherwise. What LSQ adds is the gradient of
the step ``s``: ``d v_hat / d s = round(v/s) - v/s`` inside the grid and ``-Q_N`` / ``Q_P`` at
its ends, scaled by ``g = 1/sqrt(N * Q_P)`` (``N`` values share the step: a channel's weights,
or one sample's features) so steps move at the pace of the weights. The value is rounded with
the clipped straight-through estimator (gradient 1 inside the grid, 0 outside). Weights use
:func:`~hawq_search.quant.weight.fake_quant_per_channel` with :func:`grad_scale` on the steps;
activations, where the cost is, use the fused :mod:`hawq_search.training.fused_lsq`.
"""

from __future__ import annotations

import math

import torch

from hawq_search.quant.activation import act_levels

__all__ = ["act_grad_scale", "grad_scale", "weight_grad_scale"]


class _GradScale(torch.autograd.Function):
    """Identity in the forward pass (the value is exactly ``s``), gradient times ``g``."""

    @staticmethod
    def forward(ctx, s, g):
        ctx.save_for_backward(g if torch.is_tensor(g) else torch.tensor(g))
        return s.view_as(s)

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None


def grad_scale(s: torch.Tensor, g: torch.Tensor | float) -> torch.Tensor:
    """``s`` with its gradient multiplied by ``g``. Unlike the usual ``s*g + (s - s*g).detach()``
    the forward value is bit-identical to ``s``, so training and export quantize alike."""
    return _GradScale.apply(s, g)


def weight_grad_scale(bits: torch.Tensor, per_channel: int) -> torch.Tensor:
    """LSQ's ``1/sqrt(N * Q_P)`` for each channel's step (``N`` = weights per channel); 1 for
    unquantized channels (their step is unused)."""
    qp = (2.0 ** (bits.clamp(max=16).double() - 1) - 1).clamp_min(1.0)
    g = 1.0 / torch.sqrt(per_channel * qp)
    return torch.where(bits < 16, g, torch.ones_like(g)).float()


def act_grad_scale(bits: int, signed: bool, features: int) -> float:
    """LSQ's ``1/sqrt(N * Q_P)`` for a per-tensor activation step (``N`` = features per sample)."""
    return 1.0 / math.sqrt(max(features, 1) * act_levels(bits, signed)[1])
