"""Writing run outputs safely: a reader never sees half a file, two writers never share a
temporary name, and an interrupted write leaves the old file (or none) behind."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from hawq_search.core.atomic import atomic_file

__all__ = ["atomic_write_text", "jsonable", "write_json"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (see :func:`hawq_search.core.atomic.atomic_file`)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def jsonable(x):
    """``x`` with numpy scalars and arrays as Python values and non-finite floats as None, so
    ``json.dumps`` writes strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Strict JSON, written atomically."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=1, default=str))


class RunDirLock:
    """An exclusive lock on a run directory for the life of this object's process, so two runs
    never write one ``out`` at once; taking it also proves the directory is writable."""

    def __init__(self, directory: str | os.PathLike) -> None:
        from hawq_search.core.exceptions import UserInputError

        self.directory = Path(directory)
        self.created = not self.directory.exists()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.directory / ".lock", "a+b")  # noqa: SIM115 - held open
        except OSError as exc:
            raise UserInputError(
                f"out {self.directory} is not a writable directory ({exc.strerror}): choose "
                "another out",
                params=("out",),
            ) from None
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): writable is all we can check
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise UserInputError(
                f"another hawq-search process is using out {self.directory}: wait for it to "
                "finish or choose another out",
                params=("out",),
            ) from None

    def release(self) -> None:
        """Unlock; a directory this lock created and nothing else wrote to is removed, so a
        run that failed before writing leaves nothing behind."""
        lock = self.directory / ".lock"
        if self.created and [p.name for p in self.directory.iterdir()] == [".lock"]:
            lock.unlink(missing_ok=True)
            self._file.close()
            with contextlib.suppress(OSError):
                self.directory.rmdir()
            return
        self._file.close()
