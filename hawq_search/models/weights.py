"""Pretrained weights: where they come from, how to verify them, and the preprocessing they need.

A checkpoint is only usable with the input normalisation it was trained with (the akamaster
CIFAR ResNets, for example, expect ImageNet mean/std), so :class:`Weights` carries its
:class:`Preprocess`. Files are looked up in local directories first (``--weights-dir``, the
``HAWQ_SEARCH_WEIGHTS`` environment variable, torch.hub's cache), and downloaded with a hash check
only when none holds them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hawq_search.core.exceptions import WeightsNotFoundError

WEIGHTS_ENV = "HAWQ_SEARCH_WEIGHTS"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class Preprocess:
    """Input pipeline a checkpoint expects. ``resize``/``crop`` are None for native-size inputs."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int] = (3, 32, 32)
    resize: int | None = None
    crop: int | None = None

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "resize": self.resize,
            "crop": self.crop,
        }


@dataclass(frozen=True)
class Weights:
    """A public checkpoint: URL, full sha256, preprocessing and metadata (dataset, accuracy)."""

    url: str
    sha256: str | None
    preprocess: Preprocess
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def candidate_dirs(weights_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for a weights file, in order."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(path: Path, weights: Weights) -> None:
    expected = weights.sha256
    if expected is None:
        # torch.hub convention: the 8+ hex digits after the last '-' start the sha256.
        stem = path.name.split(".")[0]
        expected = stem.rsplit("-", 1)[-1] if "-" in stem else None
    if not expected:
        return
    digest = _sha256(path)
    if not digest.startswith(expected):
        raise WeightsNotFoundError(
            f"weights file {path} has sha256 {digest[:12]}..., expected {expected[:12]}...: "
            "delete it or replace it with the published file"
        )


def resolve_weights_file(weights: Weights, weights_dir: str | os.PathLike | None = None) -> Path:
    """Path of a verified local copy of ``weights``, downloading it if no directory holds it."""
    dirs = candidate_dirs(weights_dir)
    for d in dirs:
        path = d / weights.file_name
        if path.is_file():
            _check_hash(path, weights)
            return path
    target = dirs[-1]
    try:
        target.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(target / weights.file_name), progress=True)
    except Exception as exc:  # noqa: BLE001 - any network failure means "not available"
        looked = ", ".join(str(d) for d in dirs)
        raise WeightsNotFoundError(
            f"weights file {weights.file_name} not found (looked in {looked}) and the download "
            f"from {weights.url} failed ({type(exc).__name__}); put the file in a directory and "
            f"pass weights_dir DIR or set {WEIGHTS_ENV}",
            params=("weights_dir",),
        ) from None
    path = target / weights.file_name
    _check_hash(path, weights)
    return path


def extract_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Plain state_dict from a checkpoint object: unwraps ``state_dict``/``model`` keys and
    strips ``module.`` prefixes left by DataParallel."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) or isinstance(inner, torch.nn.Module):
                return extract_state_dict(inner)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsNotFoundError(
            "checkpoint holds no state_dict: save model.state_dict() or a dict with 'state_dict'"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a plain state_dict.

    Only tensors and plain containers are read (``torch.load(weights_only=True)``): a pickle
    can run any code while it loads, so a file that needs the full unpickler is refused unless
    ``trust`` is set -- never retried silently.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist: pass an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
        if not trust and "global" in str(exc).lower():  # a class or function, not data
            raise WeightsNotFoundError(
                f"checkpoint {path} holds Python objects besides tensors, and loading them can "
                "run arbitrary code: re-save it as model.state_dict(), or pass "
                "trust_checkpoint if you trust whoever made the file",
                params=("trust_checkpoint",),
            ) from None
        raise WeightsNotFoundError(
            f"checkpoint {path} is not a torch file ({type(exc).__name__}): pass a file saved "
            "with torch.save"
        ) from None
    return extract_state_dict(obj)


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state_dict``; a mismatch is one error naming the first differences."""
    own = model.state_dict()
    # Checkpoints saved before BatchNorm tracked batches lack num_batches_tracked: harmless.
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if items:
            problems.append(f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
    if problems:
        raise WeightsNotFoundError(
            f"{source} does not fit the network ({'; '.join(problems)}): check the model and "
            "checkpoint arguments",
            params=("model", "checkpoint"),
        )
    model.load_state_dict(state_dict, strict=False)


def format_dirs(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)
