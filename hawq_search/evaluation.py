"""Accuracy of float and fake-quantized models on an in-memory evaluation set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hawq_search.data.datasets import TensorData

__all__ = ["top1", "mean_loss"]


@torch.no_grad()
def top1(model: nn.Module, data: TensorData, *, batch_size: int = 250, progress=None) -> float:
    """Top-1 accuracy in percent (float32, eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for x, y in data.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    return 100.0 * correct / len(data)


@torch.no_grad()
def mean_loss(model: nn.Module, data: TensorData, *, batch_size: int = 250) -> float:
    """Mean cross-entropy (nats per image)."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for x, y in data.batches(batch_size):
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
    finally:
        model.train(was_training)
    return total / len(data)
