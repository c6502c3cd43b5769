"""The sensitivity table: predicted loss increase per output channel and per bit option.

It is what the searches optimise, so it is plain data (numpy arrays keyed by layer / activation
group) that can be cached to disk and reloaded without the model.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hawq_search.core.atomic import atomic_file
from hawq_search.files import jsonable

__all__ = ["SensitivityTable"]


@dataclass
class SensitivityTable:
    """``weight[layer][c, i]``: predicted loss increase when channel ``c`` of ``layer`` has
    ``w_bits[i]`` bits; ``act[group][j]``: the same for activation group ``group`` at
    ``a_bits[j]``. Unquantized options (16, 32) are 0 by definition."""

    method: str
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    weight: dict[str, np.ndarray]
    act: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def layer_loss(self, layer: str) -> np.ndarray:
        """Predicted loss increase of the whole layer per bit option (sum over channels)."""
        return self.weight[layer].sum(axis=0)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        arrays = {f"w/{k}": v for k, v in self.weight.items()}
        arrays.update({f"a/{k}": v for k, v in self.act.items()})
        header = {
            "method": self.method,
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
            "meta": self.meta,
        }
        blob = np.frombuffer(json.dumps(jsonable(header)).encode(), dtype=np.uint8)
        with atomic_file(path) as f:
            np.savez(f, __header__=blob, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        """Read a table written by :meth:`save`; ``ValueError`` for anything else (an empty,
        truncated or foreign file). No pickles are read."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["__header__"]).decode())
                weight = {k[2:]: z[k] for k in z.files if k.startswith("w/")}
                act = {k[2:]: z[k] for k in z.files if k.startswith("a/")}
            return cls(
                str(header["method"]),
                tuple(int(b) for b in header["w_bits"]),
                tuple(int(b) for b in header["a_bits"]),
                weight,
                act,
                dict(header["meta"]),
            )
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"{path}: not a readable sensitivity table ({type(exc).__name__})"
            ) from None

    def problems(
        self,
        layers: dict[str, int],
        act_groups: list[str],
        w_bits: tuple[int, ...],
        a_bits: tuple[int, ...],
    ) -> list[str]:
        """What makes this table unusable for a model with ``layers`` (name -> output
        channels) and ``act_groups`` at these bit options: empty when it fits."""
        out = []
        if tuple(self.w_bits) != tuple(w_bits) or tuple(self.a_bits) != tuple(a_bits):
            out.append(f"bits {self.w_bits}/{self.a_bits} instead of {w_bits}/{a_bits}")
        for name, channels in layers.items():
            v = self.weight.get(name)
            if v is None or v.shape != (channels, len(w_bits)):
                got = "missing" if v is None else f"shape {v.shape}"
                out.append(f"layer {name}: {got}, expected ({channels}, {len(w_bits)})")
        for g in act_groups:
            v = self.act.get(g)
            if v is None or v.shape != (len(a_bits),):
                out.append(f"activation group {g}: missing or of the wrong shape")
        for v in [*self.weight.values(), *self.act.values()]:
            if (
                not np.issubdtype(v.dtype, np.floating)
                or not np.all(np.isfinite(v))
                or (v < 0).any()
            ):
                out.append("non-finite or negative values")
                break
        return out
