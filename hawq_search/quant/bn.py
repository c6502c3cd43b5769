"""BatchNorm statistics correction: a post-training fix for the shift quantized weights cause.

Quantizing weights changes the mean and variance of every conv output, so the float model's
BatchNorm running statistics no longer normalise them. Re-estimating the statistics from scratch
on a few hundred calibration images fixes that shift but replaces statistics gathered over the
whole training set by noisy small-sample ones, which costs accuracy at 5-8 bits.
:func:`correct_bn` therefore keeps the float statistics and moves them by the *difference*
between the quantized and the float model measured on the same calibration batches:

    mean_q = mean_fp + (E[mu_q] - E[mu_fp]),    var_q = var_fp * E[var_q] / E[var_fp]

(both models normalise with batch statistics during the pass, so each BatchNorm sees inputs
already corrected upstream). This corrects what bias correction (Nagel et al., 2019) corrects,
plus the variance.
"""

from __future__ import annotations

import torch
from torch import nn

from hawq_search.data.datasets import Batches
from hawq_search.runtime import module_device

__all__ = ["BatchMoments", "batch_moments", "correct_bn", "batchnorms"]


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


class _BatchMoments:
    """Sums over batches of each BatchNorm input's per-channel batch mean and variance."""

    def __init__(self, bns: dict[str, nn.Module]) -> None:
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.handles = [bn.register_forward_pre_hook(self._hook(name)) for name, bn in bns.items()]

    def _hook(self, name: str):
        def hook(_m, inputs):
            x = inputs[0].detach().float()
            dims = [0] + list(range(2, x.dim()))
            mean, var = x.mean(dims), x.var(dims, unbiased=True)
            if name in self.sums:
                self.sums[name][0] += mean
                self.sums[name][1] += var
            else:
                self.sums[name] = [mean.clone(), var.clone()]

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def _moments(model: nn.Module, data: Batches, batch_size: int) -> dict[str, list[torch.Tensor]]:
    bns = batchnorms(model)
    saved = {
        n: (bn.training, bn.momentum, bn.running_mean.clone(), bn.running_var.clone())
        for n, bn in bns.items()
    }
    was_training = model.training
    model.eval()
    for bn in bns.values():
        bn.train()  # normalise with batch statistics, as the corrected model will
    rec = _BatchMoments(bns)
    n_batches = 0  # counted, not derived from len(data): a stream's length is only a promise
    try:
        device = module_device(model)
        for x, _ in data.batches(batch_size):
            model(x.to(device))
            n_batches += 1
    finally:
        rec.close()
        for n, bn in bns.items():
            training, momentum, mean, var = saved[n]
            bn.train(training)
            bn.momentum = momentum
            bn.running_mean.copy_(mean)  # the pass must not move the running statistics
            bn.running_var.copy_(var)
        model.train(was_training)
    return {name: [m / n_batches, v / n_batches] for name, (m, v) in rec.sums.items()}


BatchMoments = dict[str, list[torch.Tensor]]  # BatchNorm name -> [E[batch mean], E[batch var]]


@torch.no_grad()
def batch_moments(model: nn.Module, data: Batches, *, batch_size: int = 128) -> BatchMoments:
    """Mean over ``data``'s batches of each BatchNorm input's batch mean and variance: the float
    model's half of :func:`correct_bn`, which callers correcting many plans compute once."""
    return _moments(model, data, batch_size)


@torch.no_grad()
def correct_bn(
    quant_model: nn.Module,
    float_model: nn.Module,
    data: Batches,
    *,
    batch_size: int = 128,
    float_moments: BatchMoments | None = None,
) -> nn.Module:
    """Shift ``quant_model``'s BatchNorm statistics by the quantized-minus-float difference
    measured on ``data`` (in place). Both models must have the same BatchNorm names;
    ``float_moments`` (:func:`batch_moments` of ``float_model`` on the same data and batch
    size) skips the float model's pass."""
    q = _moments(quant_model, data, batch_size)
    f = float_moments if float_moments is not None else _moments(float_model, data, batch_size)
    for name, bn in batchnorms(quant_model).items():
        if name not in q or name not in f:
            continue
        (mq, vq), (mf, vf) = q[name], f[name]
        bn.running_mean += mq - mf
        bn.running_var *= vq / vf.clamp_min(1e-12)
    return quant_model
