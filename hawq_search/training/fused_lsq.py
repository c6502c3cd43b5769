"""LSQ activation quantization as one autograd function with fused kernels.

Written as plain tensor code, an LSQ activation quantizer costs about fifteen passes over each
activation tensor per training step (a float32 copy, the division, rounding, clamping, masks,
and autograd's gradients of the division and the product), which made a ResNet-20 QAT step
cost 2.1x an FP step. Here the forward pass and the backward pass are each one function of
the saved input: the forward returns ``clamp(round(x / s), qmin, qmax) * s`` in the input's
dtype (the values a following bf16 convolution would see anyway), computed in float32 (or the
step's wider dtype), and the backward returns the straight-through gradient of ``x`` and LSQ's
gradient of ``s`` from the same recomputed ``v = x / s``. Of tensors the size of ``x``, only
``x`` itself is saved.

Where torch's compiler works on the device (``torch.compile`` needs a C++ compiler on CPUs)
each of the two functions becomes one fused loop; the first call tries it and falls back to the
same function run eagerly, with one warning, if compilation fails. ``HAWQ_SEARCH_COMPILE=0``
turns compilation off (``=1`` makes a failure an error). The eager and compiled kernels compute
the same formula in float32; tests check they agree.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

__all__ = ["compile_mode", "lsq_act_quantize", "reset_kernels"]


def _forward(
    x: torch.Tensor, s: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor
) -> torch.Tensor:
    v = x.to(s.dtype) / s
    return (torch.clamp(torch.round(v), qmin, qmax) * s).to(x.dtype)


def _backward(
    x: torch.Tensor, grad: torch.Tensor, s: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    v = x.to(s.dtype) / s
    inside = (v >= qmin) & (v <= qmax)
    q = torch.clamp(torch.round(v), qmin, qmax)
    g = grad.to(s.dtype)
    grad_x = torch.where(inside, g, 0.0).to(x.dtype)
    grad_s = (g * (q - torch.where(inside, v, 0.0))).sum()
    return grad_x, grad_s


_EAGER = (_forward, _backward)
_kernels: dict[tuple[str, int], Callable] = {}  # (device type, 0 forward / 1 backward)


def compile_mode() -> str:
    """``auto`` (try, fall back), ``off`` or ``on`` (a failure is an error), from the
    ``HAWQ_SEARCH_COMPILE`` environment variable."""
    v = os.environ.get("HAWQ_SEARCH_COMPILE", "auto").strip().lower()
    return {"0": "off", "false": "off", "off": "off", "1": "on", "true": "on", "on": "on"}.get(
        v, "auto"
    )


def reset_kernels() -> None:
    """Forget the kernel choice (tests switch the mode)."""
    _kernels.clear()


def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _run(which: int, device_type: str, *args):
    """Call the forward (0) or backward (1) kernel for ``device_type``: the first call compiles
    it unless disabled, and falls back to eager code for good if compilation fails."""
    key = (device_type, which)
    if key in _kernels:
        return _kernels[key](*args)
    mode = compile_mode()
    if mode != "off":
        kernel = _compiled(_EAGER[which])
        try:
            out = kernel(*args)
        except Exception as e:  # compiler missing or broken on this machine
            if mode == "on":
                raise
            warnings.warn(
                f"torch.compile is unavailable here ({type(e).__name__}); the LSQ activation "
                "quantizer runs eagerly (slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            for k in (0, 1):  # a broken compiler is not retried for the other kernel
                _kernels.setdefault((device_type, k), _EAGER[k])
            return _EAGER[which](*args)
        _kernels[key] = kernel
        return out
    _kernels[key] = _EAGER[which]
    return _EAGER[which](*args)


class _LsqAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, g, qmin, qmax):
        s = step.detach().to(torch.promote_types(x.dtype, step.dtype))  # bf16 x: float32
        # the grid ends as tensors, so one compiled kernel serves every width
        lo, hi = (torch.tensor(v, dtype=s.dtype, device=s.device) for v in (qmin, qmax))
        ctx.save_for_backward(x, s, lo, hi)
        ctx.g = g
        return _run(0, x.device.type, x, s, lo, hi)

    @staticmethod
    def backward(ctx, grad):
        x, s, lo, hi = ctx.saved_tensors
        grad_x, grad_s = _run(1, x.device.type, x, grad.contiguous(), s, lo, hi)
        return grad_x, (grad_s * ctx.g).reshape(()), None, None, None


def lsq_act_quantize(
    x: torch.Tensor, step: torch.Tensor, g: float, qmin: float, qmax: float
) -> torch.Tensor:
    """``clamp(round(x / s), qmin, qmax) * s`` in ``x``'s dtype, with the clipped
    straight-through gradient to ``x`` and LSQ's gradient (scaled by ``g``) to ``step``."""
    return _LsqAct.apply(x, step, g, qmin, qmax)
