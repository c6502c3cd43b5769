"""Progress bars for long work (tqdm), off when the user asks for quiet output."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, total: int, desc: str, unit: str):
    """A tqdm bar (a context manager with ``update``) that draws nothing when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True
    )
