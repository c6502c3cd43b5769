"""Post-training quantization of a plan: the fake-quantized model, with BatchNorm statistics
corrected on the calibration images. The place for later PTQ steps (BN folding, calibration
methods, bias correction)."""

from __future__ import annotations

from torch import nn

from hawq_search.data.datasets import Batches
from hawq_search.plan import Plan, apply_plan
from hawq_search.quant.bn import BatchMoments, correct_bn

__all__ = ["ptq_model"]


def ptq_model(
    model: nn.Module,
    plan: Plan,
    calib: Batches,
    *,
    bn_correction: bool = True,
    batch_size: int = 128,
    float_moments: BatchMoments | None = None,
) -> nn.Module:
    """A copy of ``model`` quantized as ``plan`` says, its BatchNorm statistics shifted by the
    difference quantization causes on ``calib`` unless ``bn_correction`` is off
    (``float_moments``: the float model's :func:`~hawq_search.quant.bn.batch_moments` on
    ``calib``, when already known)."""
    qmodel = apply_plan(model, plan)
    if bn_correction:
        correct_bn(qmodel, model, calib, batch_size=batch_size, float_moments=float_moments)
    return qmodel
