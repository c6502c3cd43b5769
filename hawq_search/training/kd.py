"""Distillation losses: Hinton's logit KD and channel-attention feature KD (BAG / AKT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_loss", "channel_attention", "kd_loss"]


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """``(1 - alpha) CE(q, y) + alpha T^2 KL(softmax(p/T) || softmax(q/T))`` (batch mean; the
    ``T^2`` keeps the soft term's gradient comparable across temperatures). No teacher: CE."""
    ce = F.cross_entropy(student.float(), labels)
    if teacher is None or alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, 1),
        F.log_softmax(teacher.float() / t, 1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - alpha) * ce + alpha * t * t * kl


def channel_attention(f: torch.Tensor) -> torch.Tensor:
    """``softmax_c(mean_hw F^2)``: which channels a feature map uses, per sample."""
    return torch.softmax(f.float().pow(2).flatten(2).mean(2), dim=1)


def attention_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over tapped layers of the batch-mean squared distance of channel attentions."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        total = total + (channel_attention(s) - channel_attention(t)).pow(2).sum(1).mean()
    return total
