"""Per-tensor activation quantization, calibrated on the calibration images.

Tensors that are never negative (ReLU outputs) use an unsigned grid ``[0, c]`` with ``2**b``
levels; others a symmetric signed grid ``[-c, c]`` with ``2**b - 1`` levels. The clip ``c`` is
chosen per bit-width to minimise the squared error on a sample of the tensor's values.
"""

from __future__ import annotations

import torch

__all__ = ["ActStats", "act_levels", "quantize_activation", "fake_quant_activation"]

_MAX_SAMPLES = 1 << 18
_SEARCH_SAMPLES = 1 << 16


def act_levels(bits: int, signed: bool) -> tuple[float, float]:
    """(qmin, qmax) of the integer grid."""
    if signed:
        q = 2 ** (bits - 1) - 1
        return -float(q), float(q)
    return 0.0, float(2**bits - 1)


def quantize_activation(x: torch.Tensor, bits: int, clip: float, signed: bool) -> torch.Tensor:
    if bits >= 16:
        return x
    qmin, qmax = act_levels(bits, signed)
    s = max(clip, 1e-12) / qmax
    return torch.clamp(torch.round(x / s), qmin, qmax) * s


class _ClampRoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, qmin, qmax):
        v = x / s
        ctx.save_for_backward((v >= qmin) & (v <= qmax))
        return torch.clamp(torch.round(v), qmin, qmax) * s

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None


def fake_quant_activation(x: torch.Tensor, bits: int, clip: float, signed: bool) -> torch.Tensor:
    """Differentiable :func:`quantize_activation` (clipped straight-through estimator); where
    no gradient can flow (evaluation, ``no_grad``) the plain function, which gives the same
    values without forming the estimator's mask."""
    if bits >= 16:
        return x
    if not (torch.is_grad_enabled() and x.requires_grad):
        return quantize_activation(x, bits, clip, signed)
    qmin, qmax = act_levels(bits, signed)
    return _ClampRoundSTE.apply(x, max(clip, 1e-12) / qmax, qmin, qmax)


class ActStats:
    """Running statistics of one activation tensor: sign, max |x| and a reservoir of values."""

    def __init__(self, seed: int = 0) -> None:
        self.min = float("inf")
        self.absmax = 0.0
        self.samples: list[torch.Tensor] = []
        self._n = 0
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        self.min = min(self.min, float(x.min()))
        self.absmax = max(self.absmax, float(x.abs().max()))
        take = min(x.numel(), max(1, _MAX_SAMPLES // 8))
        idx = torch.randint(0, x.numel(), (take,), generator=self._gen)
        self.samples.append(x[idx.to(x.device)].cpu())  # a small reservoir, kept on the CPU
        self._n += take
        if self._n > 2 * _MAX_SAMPLES:
            merged = torch.cat(self.samples)
            keep = torch.randperm(merged.numel(), generator=self._gen)[:_MAX_SAMPLES]
            self.samples = [merged[keep]]
            self._n = _MAX_SAMPLES

    @property
    def signed(self) -> bool:
        return self.min < 0

    def best_clip(self, bits: int) -> float:
        """Clip value minimising the squared quantization error of the sampled values.

        Coarse-to-fine over the clip as a fraction of max |x|: 20 fractions in [0.05, 1], then 11
        around the best at a step of 0.005 (31 error evaluations on at most 2**16 values).
        """
        if bits >= 16 or self.absmax == 0.0:
            return self.absmax
        x = torch.cat(self.samples)
        if x.numel() > _SEARCH_SAMPLES:
            x = x[torch.randperm(x.numel(), generator=self._gen)[:_SEARCH_SAMPLES]]

        def err(frac: float) -> float:
            c = frac * self.absmax
            return float(((quantize_activation(x, bits, c, self.signed) - x) ** 2).sum())

        coarse = torch.linspace(0.05, 1.0, 20).tolist()
        best = min(coarse, key=err)
        fine = [min(1.0, max(0.01, best + d)) for d in torch.linspace(-0.025, 0.025, 11).tolist()]
        return min(fine, key=err) * self.absmax
