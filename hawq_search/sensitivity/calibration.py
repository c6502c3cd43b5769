"""Activation calibration: one forward pass over the calibration set recording each quantizer's
input statistics (sign, max, a sample of values) for range selection."""

from __future__ import annotations

import torch
from torch import nn

from hawq_search.data.datasets import Batches
from hawq_search.graph.trace import ModelGraph
from hawq_search.quant.activation import ActStats
from hawq_search.runtime import module_device

__all__ = ["collect_act_stats", "act_clips"]


@torch.no_grad()
def collect_act_stats(
    model: nn.Module, graph: ModelGraph, data: Batches, batch_size: int = 256
) -> dict[str, ActStats]:
    """Statistics of the input tensor of every activation group."""
    modules = dict(model.named_modules())
    stats = {group: ActStats(seed=i) for i, group in enumerate(graph.act_groups)}
    handles = []
    for group, names in graph.act_groups.items():
        # One consumer suffices: every layer of the group reads the same tensor.
        def hook(_m, inputs, _group=group):
            stats[_group].update(inputs[0])

        handles.append(modules[names[0]].register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = module_device(model)
        for x, _ in data.batches(batch_size):
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def act_clips(stats: dict[str, ActStats], bits: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """MSE-optimal clip per group and bit option."""
    return {g: {b: s.best_clip(b) for b in bits} for g, s in stats.items()}
