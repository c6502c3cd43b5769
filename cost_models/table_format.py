"""The cost-table CSV format: parsing, validation and writing (the model is in ``table.py``).

File format (one row per measured (layer shape, bits); ``#`` lines are comments)::

    op,in_channels,out_channels,in_h,in_w,out_h,out_w,kernel_h,kernel_w,stride,groups,batch,w_bits,a_bits,latency_s,energy_j
    conv2d,16,16,32,32,32,32,3,3,1,1,1,8,8,0.00021,

Required columns: see ``REQUIRED``; ``energy_j`` and the bookkeeping columns in ``OPTIONAL`` may be
omitted or left blank (blank energy = not measured). Units: ``latency_s`` seconds and ``energy_j``
joules, per inference of ``batch`` samples. ``in_h``/``in_w`` are the layer's *unpadded* input
size (the tensor the layer receives, before its own zero padding), so that
``out = floor((in + 2p - k) / s) + 1`` for some padding ``p`` in ``0..k-1``; a row no padding
explains is rejected. For ``linear`` rows, blank spatial and kernel cells mean 1. Dilated
convolutions cannot be expressed (there is no dilation column). Every problem raises
:class:`CostModelError` with one line ``file:line: column 'name': problem``.

A cost that falls with more bits (int4 slower than int8 for some shapes, as on GPUs) is accepted
with one :class:`InputWarning` per table naming an example: the model prices every pair as the
cheapest measured pair with at least those bits.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cost_models._text import read_text
from hawq_search.core.exceptions import CostModelError, InputWarning
from hawq_search.core.layers import LayerInfo

__all__ = [
    "REQUIRED",
    "OPTIONAL",
    "COLUMNS",
    "SHAPE_COLUMNS",
    "ShapeKey",
    "Measurement",
    "CostTable",
    "load_cost_table",
    "write_cost_table",
    "shape_key",
    "layer_from_key",
    "describe_key",
    "falling_pairs",
    "possible_outputs",
]

SHAPE_COLUMNS = (
    "op", "in_channels", "out_channels", "in_h", "in_w", "out_h", "out_w",
    "kernel_h", "kernel_w", "stride", "groups", "batch",
)  # fmt: skip
REQUIRED = SHAPE_COLUMNS + ("w_bits", "a_bits", "latency_s")
OPTIONAL = ("energy_j", "layer", "backend", "n_runs", "std_s")
COLUMNS = REQUIRED + OPTIONAL
LINEAR_DEFAULT_ONE = ("in_h", "in_w", "out_h", "out_w", "kernel_h", "kernel_w", "stride", "groups")
OPS = ("conv2d", "linear")


@dataclass(frozen=True)
class ShapeKey:
    """What a measurement is matched on: the layer's shape and the batch it ran at."""

    op: str
    in_channels: int
    out_channels: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride: int
    groups: int
    batch: int


@dataclass(frozen=True)
class Measurement:
    latency_s: float
    energy_j: float | None
    line: int
    backend: str = ""  # what ran (e.g. "int8-x86", "fp32"), as the table says


@dataclass
class CostTable:
    """Parsed table: shape -> {(w_bits, a_bits): measurement}."""

    path: str
    rows: dict[ShapeKey, dict[tuple[int, int], Measurement]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for v in self.rows.values())

    def batches(self) -> list[int]:
        return sorted({k.batch for k in self.rows})

    def has_energy(self) -> bool:
        return any(m.energy_j is not None for p in self.rows.values() for m in p.values())


def shape_key(layer: LayerInfo, batch: int) -> ShapeKey | None:
    """Key of ``layer`` at ``batch``; None when the table format cannot express it (unequal
    strides, dilation, inputs that are not C x H x W)."""
    if layer.op == "linear":
        return ShapeKey("linear", layer.in_channels, layer.out_channels, 1, 1, 1, 1, 1, 1, 1, 1, batch)  # fmt: skip
    if layer.stride[0] != layer.stride[1] or len(layer.input_shape) != 3:
        return None
    if tuple(layer.dilation) != (1, 1):
        return None
    return ShapeKey(
        "conv2d", layer.in_channels, layer.out_channels,
        layer.input_shape[1], layer.input_shape[2], layer.output_shape[1], layer.output_shape[2],
        layer.kernel_size[0], layer.kernel_size[1], layer.stride[0], layer.groups, batch,
    )  # fmt: skip


def layer_from_key(key: ShapeKey, name: str = "table-row") -> LayerInfo:
    """A LayerInfo with the shape of a table row (to price it analytically)."""
    if key.op == "linear":
        params = key.in_channels * key.out_channels
        return LayerInfo(
            name, "linear", key.in_channels, key.out_channels, (1, 1), (1, 1), (0, 0), 1,
            (key.in_channels,), (key.out_channels,), (key.out_channels, key.in_channels),
            False, params, params, name,
        )  # fmt: skip
    cig = key.in_channels // key.groups
    params = key.out_channels * cig * key.kernel_h * key.kernel_w
    return LayerInfo(
        name, "conv2d", key.in_channels, key.out_channels, (key.kernel_h, key.kernel_w),
        (key.stride, key.stride), (key.kernel_h // 2, key.kernel_w // 2), key.groups,
        (key.in_channels, key.in_h, key.in_w), (key.out_channels, key.out_h, key.out_w),
        (key.out_channels, cig, key.kernel_h, key.kernel_w), False, params,
        params * key.out_h * key.out_w, name,
    )  # fmt: skip


def describe_key(key: ShapeKey) -> str:
    """``conv2d 16->32 32x32->16x16 k3x3 s2 g1 batch 8`` (for messages)."""
    if key.op == "linear":
        return f"linear {key.in_channels}->{key.out_channels} batch {key.batch}"
    return (
        f"conv2d {key.in_channels}->{key.out_channels} {key.in_h}x{key.in_w}->{key.out_h}x"
        f"{key.out_w} k{key.kernel_h}x{key.kernel_w} s{key.stride} g{key.groups} batch {key.batch}"
    )


# -- parsing ------------------------------------------------------------------------------------


def _fail(path: str, line: int, col: str, problem: str) -> CostModelError:
    return CostModelError(f"{path}:{line}: column '{col}': {problem}")


def _parse_int(path: str, line: int, col: str, text: str, lo: int, hi: int | None = None) -> int:
    try:
        v = int(text)
    except ValueError:
        raise _fail(path, line, col, f"expected an integer, got {text!r}") from None
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise _fail(path, line, col, f"value {v} out of range (must be {rng})")
    return v


def _parse_cost(path: str, line: int, col: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _fail(path, line, col, f"expected a number, got {text!r}") from None
    if math.isnan(v):
        raise _fail(path, line, col, "NaN value (costs must be finite numbers >= 0)")
    if math.isinf(v):
        raise _fail(path, line, col, f"infinite value {text} (costs must be finite)")
    if v < 0:
        raise _fail(path, line, col, f"negative value {text} (costs must be >= 0)")
    return v


def load_cost_table(path: str | Path) -> CostTable:
    """Parse and validate a cost-table CSV (see the module docstring)."""
    src = str(path)
    text = read_text(Path(path), "cost table")
    table = CostTable(src)
    header: list[str] | None = None
    header_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in next(csv.reader([raw]))]
        if header is None:
            header, header_line = _check_header(src, lineno, cells), lineno
            continue
        _add_row(table, src, lineno, header, cells)
    if header is None:
        raise CostModelError(f"{src}: empty cost table (no header line)")
    if not table.rows:
        raise CostModelError(f"{src}:{header_line}: cost table has a header but no rows")
    _warn_falling(table)
    return table


def _check_header(src: str, line: int, cells: list[str]) -> list[str]:
    seen: set[str] = set()
    for c in cells:
        if c not in COLUMNS:
            raise _fail(src, line, c, f"unknown column (expected: {', '.join(COLUMNS)})")
        if c in seen:
            raise _fail(src, line, c, "column appears twice")
        seen.add(c)
    for c in REQUIRED:
        if c not in seen:
            raise _fail(src, line, c, "required column missing from the header")
    return cells


def _row_ints(src: str, line: int, op: str, row: dict[str, str]) -> dict[str, int]:
    ints: dict[str, int] = {}
    for col in SHAPE_COLUMNS[1:] + ("w_bits", "a_bits"):
        text = row[col]
        if not text:
            if op == "linear" and col in LINEAR_DEFAULT_ONE:
                ints[col] = 1
                continue
            raise _fail(src, line, col, "missing value")
        hi = 32 if col in ("w_bits", "a_bits") else None
        ints[col] = _parse_int(src, line, col, text, 1, hi)
    if op == "conv2d" and ints["in_channels"] % ints["groups"]:
        raise _fail(src, line, "groups", f"{ints['groups']} does not divide in_channels {ints['in_channels']}")  # fmt: skip
    if op == "conv2d":
        for axis in ("h", "w"):
            _check_spatial(src, line, axis, ints)
    return ints


def possible_outputs(size: int, kernel: int, stride: int) -> list[int]:
    """Output sizes ``floor((size + 2p - kernel) / stride) + 1`` for padding ``p`` in 0..k-1."""
    outs = {(size + 2 * p - kernel) // stride + 1 for p in range(kernel) if size + 2 * p >= kernel}
    return sorted(outs)


def _check_spatial(src: str, line: int, axis: str, ints: dict[str, int]) -> None:
    size, out, k, s = (
        ints[f"in_{axis}"],
        ints[f"out_{axis}"],
        ints[f"kernel_{axis}"],
        ints["stride"],
    )
    outs = possible_outputs(size, k, s)
    if out in outs:
        return
    shown = ", ".join(map(str, outs[:4])) + (", ..." if len(outs) > 4 else "")
    raise _fail(
        src, line, f"out_{axis}",
        f"{out} cannot come from in_{axis} {size}, kernel_{axis} {k}, stride {s} with any padding "
        f"0..{k - 1} (out = floor((in + 2p - k)/s) + 1 gives {shown or 'nothing'}; in_{axis} is "
        "the unpadded input size)",
    )  # fmt: skip


def _add_row(table: CostTable, src: str, line: int, header: list[str], cells: list[str]) -> None:
    if len(cells) > len(header):
        raise CostModelError(
            f"{src}:{line}: column {len(header) + 1}: unexpected extra value {cells[len(header)]!r} "
            f"(the header has {len(header)} columns)"
        )
    row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
    op = row["op"]
    if not op:
        raise _fail(src, line, "op", "missing value")
    if op not in OPS:
        raise _fail(src, line, "op", f"unknown op {op!r} (expected conv2d or linear)")
    ints = _row_ints(src, line, op, row)
    if not row["latency_s"]:
        raise _fail(src, line, "latency_s", "missing value")
    latency = _parse_cost(src, line, "latency_s", row["latency_s"])
    energy = _parse_cost(src, line, "energy_j", row["energy_j"]) if row.get("energy_j") else None
    for col in ("n_runs", "std_s"):
        if row.get(col):
            _parse_cost(src, line, col, row[col])
    key = ShapeKey(op, *(ints[c] for c in SHAPE_COLUMNS[1:]))
    bits = (ints["w_bits"], ints["a_bits"])
    per_shape = table.rows.setdefault(key, {})
    if bits in per_shape:
        raise _fail(src, line, "w_bits",
                    f"duplicate row: same shape, batch and bits as line {per_shape[bits].line}")  # fmt: skip
    per_shape[bits] = Measurement(latency, energy, line, row.get("backend", ""))


def falling_pairs(table: CostTable) -> list[tuple[str, Measurement, tuple, Measurement, tuple]]:
    """(column, cheaper row, its bits, row with fewer bits that costs more, its bits) for every
    cost that falls with more bits, in file order."""
    found = []
    for per_shape in table.rows.values():
        for (w, a), m in sorted(per_shape.items(), key=lambda kv: kv[1].line):
            for (w2, a2), m2 in per_shape.items():
                if (w2, a2) == (w, a) or not (w2 <= w and a2 <= a):
                    continue
                for col in ("latency_s", "energy_j"):
                    hi, lo = getattr(m2, col), getattr(m, col)
                    if hi is not None and lo is not None and lo < hi:
                        found.append((col, m, (w, a), m2, (w2, a2)))
    return found


def _warn_falling(table: CostTable) -> None:
    """Costs that fall with more bits are real (GPU int4 kernels slower than int8 for some
    shapes): accept them, once per table, with one example."""
    found = falling_pairs(table)
    if not found:
        return
    col, m, (w, a), m2, (w2, a2) = found[0]
    more = f" ({len(found) - 1} more such pairs)" if len(found) > 1 else ""
    warnings.warn(
        InputWarning(
            f"{table.path}:{m.line}: column '{col}': {getattr(m, col):g} at w_bits={w}, "
            f"a_bits={a} is below {getattr(m2, col):g} at w_bits={w2}, a_bits={a2} on line "
            f"{m2.line}{more}: accepted; every bit pair is priced as the cheapest measured pair "
            "with at least its bits"
        ),
        stacklevel=3,
    )


def write_cost_table(path: str | Path, rows: list[Mapping[str, object]], comment: str = "") -> Path:
    """Write rows (dicts keyed by column name) in the table format; returns the path."""
    path = Path(path)
    cols = list(REQUIRED) + [c for c in OPTIONAL if any(c in r for r in rows)]
    with path.open("w", newline="") as f:
        for line in comment.splitlines():
            f.write(f"# {line}\n")
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="raise", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    return path
