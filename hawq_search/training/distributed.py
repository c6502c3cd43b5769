"""The process group of a fine-tune under ``torchrun --nproc-per-node N``: one process per
device, gloo on CPUs and NCCL on GPUs, and the few collectives the training loop needs.

Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op context, so one code
path serves both. With it, every process trains its share of the same seeded global batch
(see :func:`hawq_search.training.trainer.epoch_batches`), DistributedDataParallel averages the
gradients and BatchNorm is synchronised, so N processes compute what one process computes up
to the order of float reductions. Rank 0 alone writes the run directory.

BatchNorm: on GPUs ``torch.nn.SyncBatchNorm``. On CPUs torch 2.14 has none: SyncBatchNorm
refuses CPU tensors ("expected input tensor to be on GPU") and DistributedDataParallel refuses
CPU modules holding one (or a subclass), so :class:`CpuSyncBatchNorm` is a plain BatchNorm whose
batch mean and variance are summed over processes by an all-reduce that autograd
differentiates (its backward all-reduces the incoming gradients), as torch's CUDA kernels do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from hawq_search.core.exceptions import UserInputError

__all__ = [
    "TIMEOUT",
    "DistContext",
    "CpuSyncBatchNorm",
    "convert_sync_batchnorm",
    "current",
    "init_from_env",
    "world_size_from_env",
]

# Rank 0 alone computes sensitivities and evaluates while the others wait in a collective:
# longer than torch's 30 minutes, as torchrun stops every process as soon as one fails anyway.
TIMEOUT = timedelta(hours=3)


def world_size_from_env() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank_from_env() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group; single-process defaults make every method a
    no-op, so callers never branch on whether they run distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' tensors live: cpu (gloo) or cuda (nccl)
    owns_group: bool = False  # created by init_from_env, so close() destroys it

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (so none races ahead of a file rank 0 is writing)."""
        if self.active:
            dist.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """The mean of ``value`` over processes (an epoch's loss over every rank's share)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def broadcast(self, obj):
        """Rank 0's ``obj`` (any picklable value) on every process."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def local_batch(self, batch_size: int) -> int:
        """Each process's share of a global batch of ``batch_size``; it must divide evenly,
        so the global batch (and the result) is the same as one process's."""
        if batch_size % self.world_size:
            raise UserInputError(
                f"batch_size {batch_size} is not divisible by the {self.world_size} processes "
                "of torchrun: each must train an equal share of every batch",
                params=("batch_size",),
            )
        return batch_size // self.world_size

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` for the training forward pass: itself alone, else with its BatchNorms
        synchronised (in place) inside DistributedDataParallel. Keep using the unwrapped
        ``model`` for state dicts and the QAT methods (layer names gain ``module.`` here)."""
        if not self.active:
            return model
        convert_sync_batchnorm(model, cuda=self.device == "cuda")
        ids = [self.local_rank] if self.device == "cuda" else None
        # Unused parameters are real: activation steps do nothing in CTMQ's float phases.
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=True
        )

    def close(self) -> None:
        """Destroy the process group if :func:`init_from_env` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def current() -> DistContext:
    """The context of the process group already initialised (single-process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = str(dist.get_backend()).lower()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0),
        device="cuda" if "nccl" in backend else "cpu",
    )


def init_from_env(device: torch.device | str) -> DistContext:
    """Join torchrun's process group (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): gloo for a CPU ``device``; NCCL for CUDA, with this
    process on ``cuda:LOCAL_RANK``. One process (no torchrun): a context that does nothing.
    A group someone else initialised is used as it is (and not destroyed by ``close``)."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world = world_size_from_env()
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise UserInputError(
            f"WORLD_SIZE is {world} (torchrun) but this torch build has no torch.distributed"
        )
    device = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.type == "cuda":
        if device.index is not None:
            raise UserInputError(
                f"device {device} under torchrun: give --device cuda (or auto), each process "
                "then takes cuda:LOCAL_RANK",
                params=("device",),
            )
        backend = "nccl"
        torch.cuda.set_device(local)
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserInputError(
            f"device {device.type} cannot train under torchrun: use cpu (gloo) or cuda (nccl)",
            params=("device",),
        )
    if not dist.is_backend_available(backend):
        raise UserInputError(f"torch.distributed backend {backend} is not available here")
    dist.init_process_group(backend, timeout=TIMEOUT)
    ctx = current()
    return DistContext(ctx.rank, ctx.world_size, local, ctx.device, owns_group=True)


# ---- synchronised BatchNorm ------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """``sum over processes of x``, differentiable: every process's output depends on every
    input, so the gradient of an input is the sum of the processes' output gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU processes (gloo): in training mode the mean
    and (biased) variance normalising each share are those of the whole batch, and the running
    statistics are updated from them (unbiased variance) as one BatchNorm seeing the whole
    batch would. Eval mode, or no process group, is an ordinary BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        group = dist.group.WORLD
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        n = torch.tensor([x.numel() / c], dtype=torch.float32)
        total = _AllReduceSum.apply(torch.cat([xf.sum(dims), n]), group)
        count = total[c].detach()
        mean = total[:c] / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims), group) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                factor = 0.0 if self.momentum is None else self.momentum
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:
                        factor = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, cuda: bool = False) -> nn.Module:
    """Replace, in place, every BatchNorm under ``module`` by a synchronised one holding the
    same parameter and buffer tensors (so optimizers and state-dict keys are unchanged):
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`CpuSyncBatchNorm` on CPU."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            if not isinstance(child, (CpuSyncBatchNorm, nn.SyncBatchNorm)):
                setattr(module, name, _sync_copy(child))
        else:
            convert_sync_batchnorm(child)
    return module


def _sync_copy(bn: nn.modules.batchnorm._BatchNorm) -> CpuSyncBatchNorm:
    new = CpuSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                           bn.track_running_stats)  # fmt: skip
    for name, p in bn.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in bn.named_buffers(recurse=False):
        new._buffers[name] = b
    new.train(bn.training)
    return new
