"""Datasets and the seeded calibration / evaluation subsets every step of a run shares.

Calibration images come from the training split, evaluation images from the test split, so the
plan is never chosen on the images that score it. Subsets are drawn with a seeded permutation,
which makes two runs with the same ``--seed`` see the same images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hawq_search.exceptions import DataNotFoundError, UserInputError
from hawq_search.models.weights import Preprocess

DATASETS = ("cifar10", "cifar100", "imagefolder")
DATA_ENV = "HAWQ_SEARCH_DATA"

__all__ = ["DATASETS", "DATA_ENV", "TensorData", "build_transform", "load_split", "load_subset"]


@dataclass
class TensorData:
    """A subset held in memory: preprocessed images and labels."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]


def build_transform(pre: Preprocess):
    """torchvision transform reproducing the checkpoint's preprocessing."""
    from torchvision import transforms as T

    steps = []
    if pre.resize:
        steps.append(T.Resize(pre.resize))
    if pre.crop:
        steps.append(T.CenterCrop(pre.crop))
    if not pre.resize and not pre.crop:
        steps.append(T.Resize(pre.input_size[1:]))
    steps += [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    return T.Compose(steps)


def _default_root(data_dir: str | os.PathLike | None) -> Path:
    if data_dir:
        return Path(data_dir)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path.home() / ".cache" / "hawq_search" / "data"


def load_split(
    dataset: str, data_dir: str | os.PathLike | None, split: str, pre: Preprocess
) -> Dataset:
    """The ``train`` or ``test`` split of ``dataset`` with the checkpoint's preprocessing."""
    from torchvision import datasets as D

    if dataset not in DATASETS:
        raise UserInputError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    root = _default_root(data_dir)
    transform = build_transform(pre)
    if dataset == "imagefolder":
        folder = root / split
        if not folder.is_dir():
            raise DataNotFoundError(
                f"{folder} does not exist: --data-dir must hold train/ and test/ class folders"
            )
        try:
            return D.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataNotFoundError(f"{folder}: {exc}") from None
    cls = D.CIFAR10 if dataset == "cifar10" else D.CIFAR100
    train = split == "train"
    try:
        return cls(str(root), train=train, transform=transform, download=False)
    except RuntimeError:
        pass
    try:
        return cls(str(root), train=train, transform=transform, download=True)
    except Exception as exc:  # noqa: BLE001 - offline or unreachable mirror
        raise DataNotFoundError(
            f"{dataset} is not in {root} and could not be downloaded ({type(exc).__name__}); "
            "pass --data-dir with the extracted archive, or use --dataset imagefolder "
            "with train/ and test/ folders"
        ) from None


def load_subset(
    dataset: str,
    data_dir: str | os.PathLike | None,
    split: str,
    pre: Preprocess,
    size: int | None,
    seed: int,
    *,
    progress: bool = False,
) -> TensorData:
    """A seeded random subset of ``size`` images (all when ``size`` is 0 or None), in memory."""
    ds = load_split(dataset, data_dir, split, pre)
    n = len(ds)
    if n == 0:
        raise DataNotFoundError(f"the {split} split of {dataset} in {data_dir} has no images")
    if size is not None and size < 0:
        raise UserInputError(f"subset size must be >= 0, got {size}")
    if size and size < n:
        gen = torch.Generator().manual_seed(seed)
        indices = sorted(torch.randperm(n, generator=gen)[:size].tolist())
    else:
        indices = list(range(n))
    loader = DataLoader(Subset(ds, indices), batch_size=256, shuffle=False, num_workers=0)
    images, labels = [], []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=f"loading {split} images", unit="batch", leave=False)
    for x, y in it:
        images.append(x)
        labels.append(y)
    return TensorData(torch.cat(images), torch.cat(labels), indices, f"{dataset}:{split}")
