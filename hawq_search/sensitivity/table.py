"""The sensitivity table: predicted loss increase per output channel and per bit option.

It is what the searches optimise, so it is plain data (numpy arrays keyed by layer / activation
group) that can be cached to disk and reloaded without the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        with np.load(path) as z:
            header = json.loads(bytes(z["__header__"]).decode())
            weight = {k[2:]: z[k] for k in z.files if k.startswith("w/")}
            act = {k[2:]: z[k] for k in z.files if k.startswith("a/")}
        return cls(
            header["method"],
            tuple(header["w_bits"]),
            tuple(header["a_bits"]),
            weight,
            act,
            header["meta"],
        )
