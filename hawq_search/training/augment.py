"""CIFAR augmentation on whole batches as tensor ops: random crop after zero padding, and
horizontal flip, from a seeded generator (so an epoch's augmentation is reproducible)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_flip"]


def crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, *, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) shifted by a random crop of its ``pad``-padded copy and
    flipped with probability 1/2; randomness from ``generator`` (CPU), work on ``x``'s device.

    With ``world`` > 1, ``x`` is process ``rank``'s contiguous share of a batch of
    ``N * world`` images: the randomness of the whole batch is drawn (every process's generator
    stays in step) and this share's rows of it are applied, so each image gets the crop and
    flip one process would give it."""
    n, _, h, w = x.shape
    mine = slice(rank * n, (rank + 1) * n)
    oy = torch.randint(0, 2 * pad + 1, (n * world,), generator=generator)[mine].to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n * world,), generator=generator)[mine].to(x.device)
    flip = (torch.rand(n * world, generator=generator) < 0.5)[mine].to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
    idx_b = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx_b, idx_c, rows, cols[:, None, None, :]]
