"""Accuracy of float and fake-quantized models on an evaluation set (in memory or streamed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hawq_search.core.exceptions import UserInputError
from hawq_search.data.datasets import Batches
from hawq_search.runtime import module_device

__all__ = ["top1", "mean_loss", "loss_and_top1"]


@torch.no_grad()
def top1(model: nn.Module, data: Batches, *, batch_size: int = 250, progress=None) -> float:
    """Top-1 accuracy in percent over the samples ``data`` yields (float32, eval mode)."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    try:
        device = module_device(model)
        for x, y in data.batches(batch_size):
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    return 100.0 * correct / _nonzero(seen, data)


@torch.no_grad()
def mean_loss(model: nn.Module, data: Batches, *, batch_size: int = 250) -> float:
    """Mean cross-entropy (nats per image) over the samples ``data`` yields."""
    was_training = model.training
    model.eval()
    total = 0.0
    seen = 0
    try:
        device = module_device(model)
        for x, y in data.batches(batch_size):
            x, y = x.to(device), y.to(device)
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
            seen += len(y)
    finally:
        model.train(was_training)
    return total / _nonzero(seen, data)


def _nonzero(seen: int, data: Batches) -> int:
    if seen == 0:
        raise UserInputError(f"{getattr(data, 'source', 'data')}: no samples to evaluate")
    return seen


@torch.no_grad()
def loss_and_top1(model: nn.Module, data: Batches, *, batch_size: int = 250) -> tuple[float, float]:
    """Mean cross-entropy (nats per image) and top-1 (%) in one pass over ``data``."""
    was_training = model.training
    model.eval()
    total, correct, seen = 0.0, 0, 0
    try:
        device = module_device(model)
        for x, y in data.batches(batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    finally:
        model.train(was_training)
    n = _nonzero(seen, data)
    return total / n, 100.0 * correct / n
