"""Diagnostics of a cost table, alone or against a model's layers (``hawq-search cost check``).

Loading a table already rejects what cannot be right (bad numbers, duplicate rows, shapes no
padding explains). This module finds what loads but is probably not meant: latencies that look
like milliseconds in the seconds column, rows at a batch the profile never runs, rows written
with the padded input size, rows that match no layer of the model, and layers that no row
matches (they fall back to the analytic model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cost_models.table_format import CostTable, ShapeKey, describe_key, shape_key
from hawq_search.core.exceptions import InputWarning
from hawq_search.core.layers import LayerInfo

__all__ = ["UnmatchedShape", "TableCheck", "check_table", "unit_warnings"]

MAX_LAYER_LATENCY_S = 1.0  # a single layer slower than this is far more likely a unit mistake
MAX_EFFICIENCY = 100.0  # measured / analytic ratio beyond which the unit is suspect


@dataclass(frozen=True)
class UnmatchedShape:
    """Rows of one shape that match no layer, and a hint why (empty if none is known)."""

    key: ShapeKey
    lines: tuple[int, ...]
    hint: str = ""

    def describe(self) -> str:
        lines = ", ".join(map(str, self.lines[:6])) + (", ..." if len(self.lines) > 6 else "")
        where = f"line{'s' if len(self.lines) > 1 else ''} {lines}"
        return f"{where} ({describe_key(self.key)})" + (f": {self.hint}" if self.hint else "")


@dataclass
class TableCheck:
    """What ``check_table`` found; ``batch`` is the batch layers were matched at (None: every
    batch of the table)."""

    path: str
    rows: int
    shapes: int
    batches: list[int]
    batch: int | None = None
    layers: int = 0
    matched_rows: int = 0
    unmatched: list[UnmatchedShape] = field(default_factory=list)
    measured_layers: list[str] = field(default_factory=list)
    fallback_layers: list[str] = field(default_factory=list)
    warnings: list[InputWarning] = field(default_factory=list)


def unit_warnings(table: CostTable, latency_efficiency: float | None = None) -> list[InputWarning]:
    """Latencies that look like milliseconds (or microseconds) written into ``latency_s``."""
    out = []
    slow = [(m.latency_s, m.line) for p in table.rows.values() for m in p.values()]
    slow = sorted(t for t in slow if t[0] > MAX_LAYER_LATENCY_S)
    if slow:
        worst, line = slow[-1]
        out.append(
            InputWarning(
                f"{table.path}:{line}: column 'latency_s': {len(slow)} row(s) take more than "
                f"{MAX_LAYER_LATENCY_S:g} s for one layer (up to {worst:g} s): latency_s is in "
                "seconds; were these milliseconds? (divide by 1000)"
            )
        )
    if latency_efficiency is not None and latency_efficiency > MAX_EFFICIENCY:
        out.append(
            InputWarning(
                f"{table.path}: measured latencies are {latency_efficiency:.0f}x the profile's "
                "analytic model (median): latency_s is in seconds; were these milliseconds?"
            )
        )
    return out


def check_table(
    table: CostTable,
    layers: Sequence[LayerInfo] | None = None,
    *,
    batch: int | None = None,
    latency_efficiency: float | None = None,
) -> TableCheck:
    """Everything ``hawq-search cost check`` reports about ``table``; layers are matched at
    ``batch`` (the profile's), or at the table's only batch, or at every batch it has."""
    batches = table.batches()
    res = TableCheck(table.path, len(table), len(table.rows), batches, batch)
    res.warnings += unit_warnings(table, latency_efficiency)
    if batch is not None:
        res.warnings += _batch_warnings(table, batch)
    elif len(batches) == 1:
        res.batch = batches[0]
    if layers is not None:
        _match(table, list(layers), res)
    return res


def _batch_warnings(table: CostTable, batch: int) -> list[InputWarning]:
    other = [(k.batch, min(m.line for m in p.values())) for k, p in table.rows.items()]
    other = sorted(t for t in other if t[0] != batch)
    if not other:
        return []
    rows = sum(len(p) for k, p in table.rows.items() if k.batch != batch)
    at = ", ".join(str(b) for b in sorted({b for b, _ in other}))
    return [
        InputWarning(
            f"{table.path}:{other[0][1]}: column 'batch': {rows} row(s) are at batch {at} but "
            f"layers are matched at batch {batch} (the profile's batch or accel_batch): those "
            "rows never match a layer; fix the batch column or the profile's batch",
            params=("accel_batch",),
        )
    ]


def _layer_keys(layers: list[LayerInfo], batches: list[int]) -> dict[ShapeKey, str]:
    keys: dict[ShapeKey, str] = {}
    for layer in layers:
        for b in batches:
            key = shape_key(layer, b)
            if key is not None:
                keys.setdefault(key, layer.name)
    return keys


def _match(table: CostTable, layers: list[LayerInfo], res: TableCheck) -> None:
    batches = [res.batch] if res.batch is not None else res.batches
    keys = _layer_keys(layers, batches)
    res.layers = len(layers)
    for layer in layers:
        measured = any(shape_key(layer, b) in table.rows for b in batches)
        (res.measured_layers if measured else res.fallback_layers).append(layer.name)
    padded = []
    for key, per_shape in sorted(table.rows.items(), key=lambda kv: min(m.line for m in kv[1].values())):  # fmt: skip
        if key in keys:
            res.matched_rows += len(per_shape)
            continue
        lines = tuple(sorted(m.line for m in per_shape.values()))
        hint, is_padded = _hint(key, layers, res.batch)
        res.unmatched.append(UnmatchedShape(key, lines, hint))
        if is_padded:
            padded.append((lines[0], hint))
    if padded:
        line, hint = padded[0]
        more = f" ({len(padded) - 1} more such shapes)" if len(padded) > 1 else ""
        res.warnings.append(
            InputWarning(
                f"{table.path}:{line}: columns 'in_h', 'in_w': {hint}{more}; the table wants "
                "each layer's unpadded input size (see PROFILE_FORMAT.md)"
            )
        )


def _hint(key: ShapeKey, layers: list[LayerInfo], batch: int | None) -> tuple[str, bool]:
    """Why a row matches no layer, if a near miss explains it: (hint, is it padding)."""
    for layer in layers:
        own = shape_key(layer, key.batch)
        if own is None or layer.op != "conv2d":
            continue
        ph, pw = layer.padding
        if (ph or pw) and key == replace(own, in_h=own.in_h + 2 * ph, in_w=own.in_w + 2 * pw):
            return (
                f"input {key.in_h}x{key.in_w} looks like {layer.name}'s {own.in_h}x{own.in_w} "
                f"plus its padding {ph}x{pw} on both sides",
                True,
            )
    if batch is not None:
        for layer in layers:
            if shape_key(layer, key.batch) == key:
                return f"the shape of {layer.name}, but at batch {key.batch}, not {batch}", False
    return "", False
