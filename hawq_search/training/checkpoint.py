"""Training checkpoints, written atomically (a kill at any moment leaves the previous one)."""

from __future__ import annotations

from pathlib import Path

import torch

from hawq_search.core.atomic import atomic_file
from hawq_search.core.exceptions import UserInputError

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_file(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, fingerprint: dict) -> dict | None:
    """The checkpoint at ``path`` (None when there is none); one error if it belongs to another
    fine-tune (its ``fingerprint`` differs) or cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file
        raise UserInputError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}): delete it to start over"
        ) from None
    if state.get("fingerprint") != fingerprint:
        old, new = state.get("fingerprint") or {}, fingerprint
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise UserInputError(
            f"checkpoint {path} is of another fine-tune (differs in {', '.join(diff)}): use "
            "the same settings, or another out, or delete it to start over",
            params=("out",),
        )
    return state
