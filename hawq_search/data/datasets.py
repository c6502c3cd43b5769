"""Datasets and the seeded calibration / evaluation subsets every step of a run shares.

Calibration images come from the training split, evaluation images from the test split, so the
plan is never chosen on the images that score it. Subsets are drawn with a seeded permutation,
which makes two runs with the same ``--seed`` see the same images.

A subset is either held in memory (:class:`TensorData`: every image decoded and preprocessed
once) or streamed (:class:`StreamData`: a DataLoader reads a few batches at a time, so a
10,000-image test split never sits in memory). Both satisfy :class:`Batches`, the interface
every consumer (evaluation, calibration, BatchNorm correction) takes, and yield the same
batches in the same order for the same indices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hawq_search.config import DATASETS  # one list, kept torch-free for the CLI
from hawq_search.core.exceptions import DataNotFoundError, InputWarning, UserInputError
from hawq_search.models.weights import Preprocess

DATA_ENV = "HAWQ_SEARCH_DATA"

# Batches each DataLoader worker prepares ahead (torch's default); with ``num_workers`` workers
# a stream holds at most ``num_workers * PREFETCH_FACTOR`` batches besides the one in use.
PREFETCH_FACTOR = 2
# Batch size used to decode an in-memory subset (the result does not depend on it).
_LOAD_BATCH = 256

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "Batches",
    "TensorData",
    "StreamData",
    "build_transform",
    "from_batches",
    "load_split",
    "load_subset",
    "subset_indices",
]


@runtime_checkable
class Batches(Protocol):
    """What evaluation and calibration read: a fixed, ordered set of labelled samples.

    ``batches(batch_size)`` yields ``(inputs, labels)`` pairs of consecutive samples (float
    inputs, int64 labels), the last batch possibly shorter, in the same order on every call;
    ``len()`` is the number of samples, ``indices`` their positions in ``source``.
    """

    indices: Sequence[int]
    source: str

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TensorData:
    """A subset held in memory: preprocessed images and labels."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _check_batch_size(batch_size)
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]


class StreamData:
    """A subset read batch by batch from ``dataset``: nothing is kept between batches.

    Every :meth:`batches` call builds a DataLoader over ``Subset(dataset, indices)`` (in order,
    no shuffling, ``pin_memory=False``). With ``num_workers > 0`` the workers are started for
    that call and stopped when it ends (``persistent_workers=False``), each preparing at most
    ``prefetch_factor`` batches ahead, so at most ``num_workers * prefetch_factor + 1``
    batches exist at once. Images are decoded again on every call: use :class:`TensorData`
    for a set that is read many times and fits in memory.
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int],
        source: str,
        *,
        num_workers: int = 0,
        prefetch_factor: int = PREFETCH_FACTOR,
    ) -> None:
        _check_num_workers(num_workers)
        if prefetch_factor < 1:
            raise UserInputError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        self.dataset = dataset
        self.indices = list(indices)
        self.source = source
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"StreamData(source={self.source!r}, n={len(self)}, num_workers={self.num_workers})"

    def loader(self, batch_size: int) -> DataLoader:
        """The DataLoader one :meth:`batches` call reads."""
        _check_batch_size(batch_size)
        return _loader(
            Subset(self.dataset, self.indices),
            batch_size,
            self.num_workers,
            prefetch_factor=self.prefetch_factor,
        )

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self.loader(batch_size))
        try:
            for x, y in worker_errors(it):
                yield x, _as_labels(y)
        finally:
            # Stop the workers now (not at garbage collection) when the caller stops early.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _check_num_workers(num_workers: int) -> None:
    if int(num_workers) != num_workers or num_workers < 0:
        raise UserInputError(
            f"num_workers must be an integer >= 0, got {num_workers!r}", params=("num_workers",)
        )


def worker_errors(batches: Iterable):
    """``batches``, with a user error raised in a DataLoader worker re-raised as the original
    one-line error (torch wraps it with the worker's traceback)."""
    try:
        yield from batches
    except UserInputError as exc:
        text = str(exc)
        if "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
            raise type(exc)(message, params=exc.params) from None
        raise


def _as_labels(y) -> torch.Tensor:
    y = torch.as_tensor(y)
    return y if y.dtype == torch.int64 or y.is_floating_point() else y.to(torch.int64)


def _loader(
    ds: Dataset, batch_size: int, num_workers: int, *, prefetch_factor: int = PREFETCH_FACTOR
) -> DataLoader:
    extra = {}
    if num_workers > 0:
        extra = {"persistent_workers": False, "prefetch_factor": prefetch_factor}
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=False,
        **extra,
    )


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


def first_image_size(data_dir: str | os.PathLike | None, split: str) -> tuple[int, int, int]:
    """(C, H, W) of the first image of an image folder's ``split``: the size a user model is
    traced at when no input size is given."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    folder = _default_root(data_dir) / split
    if not folder.is_dir():
        raise DataNotFoundError(
            f"{folder} does not exist: data_dir must hold train/ and test/ class folders",
            params=("data_dir",),
        )
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    files = [
        f for d in classes[:1] for f in sorted(d.iterdir()) if f.suffix.lower() in IMG_EXTENSIONS
    ]
    if not files:
        raise DataNotFoundError(
            f"{folder} holds no images: data_dir must hold train/ and test/ class folders",
            params=("data_dir",),
        )
    try:
        with Image.open(files[0]) as im:
            width, height = im.size
    except OSError as exc:
        raise DataNotFoundError(f"{files[0]}: not a readable image ({exc})") from None
    return (3, height, width)  # ImageFolder converts every image to RGB


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
                f"{folder} does not exist: data_dir must hold train/ and test/ class folders",
                params=("data_dir",),
            )
        try:
            return D.ImageFolder(str(folder), transform=transform, loader=checked_image)
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
            "pass data_dir with the extracted archive, or use dataset imagefolder "
            "with train/ and test/ folders",
            params=("data_dir", "dataset"),
        ) from None


def checked_image(path: str):
    """An image file as RGB, read completely now, so a corrupt or truncated file is one clear
    error naming it (also from a DataLoader worker) instead of a traceback mid-pass."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataNotFoundError(
            f"{path} is not a readable image ({type(exc).__name__}: {exc}): remove or replace it"
        ) from None


def _check_classes(ds: Dataset, max_classes: int | None, source: str) -> None:
    classes = getattr(ds, "classes", None)
    if max_classes is not None and classes is not None and len(classes) > max_classes:
        raise DataNotFoundError(
            f"{source} has {len(classes)} classes but the model has {max_classes} outputs: "
            "pass the data set the model was trained on (or a model with that many classes)",
            params=("data_dir", "dataset"),
        )


def subset_indices(n: int, size: int | None, seed: int, skip: int = 0) -> list[int]:
    """The seeded subset of ``range(n)`` both :func:`load_subset` modes read: ``size`` indices
    of a seeded permutation after its first ``skip`` ones, sorted (all of ``range(n)`` when
    ``size`` is 0, None or >= n and nothing is skipped). Subsets of one seed with
    non-overlapping ``skip`` ranges are disjoint: held-out images never overlap calibration."""
    if size is not None and size < 0:
        raise UserInputError(f"subset size must be >= 0, got {size}")
    if skip and skip >= n:
        raise UserInputError(
            f"no images left after the first {skip} of {n}: fewer calibration images, or a "
            "larger split"
        )
    if (size and size < n) or skip:
        gen = torch.Generator().manual_seed(seed)
        stop = skip + size if size else n
        return sorted(torch.randperm(n, generator=gen)[skip:stop].tolist())
    return list(range(n))


def load_subset(
    dataset: str,
    data_dir: str | os.PathLike | None,
    split: str,
    pre: Preprocess,
    size: int | None,
    seed: int,
    *,
    progress: bool = False,
    in_memory: bool = True,
    num_workers: int = 0,
    max_classes: int | None = None,
    size_param: str = "size",
    skip: int = 0,
) -> TensorData | StreamData:
    """A seeded random subset of ``size`` images (all when ``size`` is 0 or None).

    ``in_memory``: decode every image once into a :class:`TensorData` (read through a
    DataLoader with ``num_workers`` workers); otherwise return a :class:`StreamData` over the
    same indices that decodes them batch by batch on every pass (``progress`` is then unused:
    the caller's pass reports its own progress). A data set with more classes than
    ``max_classes`` is refused; a ``size`` above the split's size warns (as ``size_param``) and
    takes the whole split. ``skip``: leave out the permutation's first ``skip`` indices (those
    of a ``size=skip`` subset of the same seed).
    """
    _check_num_workers(num_workers)
    ds = load_split(dataset, data_dir, split, pre)
    n = len(ds)
    if n == 0:
        raise DataNotFoundError(f"the {split} split of {dataset} in {data_dir} has no images")
    source = f"{dataset}:{split}"
    _check_classes(ds, max_classes, f"{source} ({data_dir or 'default location'})")
    if size and size > n - skip:
        warnings.warn(
            InputWarning(
                f"{size_param} {size} is more than the {n - skip} images of {source}"
                + (f" left after {skip}" if skip else "")
                + f": using all {n - skip}",
                params=(size_param,),
            ),
            stacklevel=2,
        )
    indices = subset_indices(n, size, seed, skip)
    if not in_memory:
        return StreamData(ds, indices, source, num_workers=num_workers)
    loader = _loader(Subset(ds, indices), _LOAD_BATCH, num_workers)
    images, labels = [], []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=f"loading {split} images", unit="batch", leave=False)
    for x, y in worker_errors(it):
        images.append(x)
        labels.append(_as_labels(y))
    return TensorData(torch.cat(images), torch.cat(labels), indices, source)


def from_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    limit: int | None,
    source: str = "user",
) -> TensorData:
    """The first ``limit`` samples (all when ``limit`` is None or 0) of an iterable of
    ``(inputs, targets)`` batches, e.g. a user's DataLoader, in memory.

    Iteration stops as soon as ``limit`` samples are read; the last batch is sliced. Fewer
    samples are returned when the iterable runs out first. Tensors are detached and moved to
    the CPU; ``indices`` are ``range(n)`` (positions in the iteration order).
    """
    if limit is not None and (int(limit) != limit or limit < 0):
        raise UserInputError(f"limit must be an integer >= 0 or None, got {limit!r}")
    want = limit or None
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n = 0
    for k, item in enumerate(batches):
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or not all(isinstance(t, torch.Tensor) for t in item)
        ):
            raise UserInputError(
                f"{source}: batch {k} is a {_describe(item)}, expected a pair "
                "(inputs, targets) of tensors"
            )
        x, y = item
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise UserInputError(
                f"{source}: batch {k} has inputs of shape {tuple(x.shape)} and targets of shape "
                f"{tuple(y.shape)}: both need the same first (batch) dimension"
            )
        if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]):
            raise UserInputError(
                f"{source}: batch {k} has inputs of shape {tuple(x.shape)} and targets of shape "
                f"{tuple(y.shape)}, batch 0 had {tuple(xs[0].shape)} and {tuple(ys[0].shape)}: "
                "every sample must have the same shape"
            )
        if want is not None and n + len(x) > want:
            x, y = x[: want - n], y[: want - n]
        xs.append(x.detach().cpu())
        ys.append(y.detach().cpu())
        n += len(x)
        if want is not None and n >= want:
            break
    if n == 0:
        raise UserInputError(f"{source}: the batches hold no samples, expected (inputs, targets)")
    return TensorData(torch.cat(xs), _as_labels(torch.cat(ys)), list(range(n)), source)


def _describe(item) -> str:
    if isinstance(item, (tuple, list)):
        inner = ", ".join(type(t).__name__ for t in item[:4]) + (", ..." if len(item) > 4 else "")
        return f"{type(item).__name__} of {len(item)} ({inner})"
    return type(item).__name__
