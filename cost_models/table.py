"""User-measured per-layer cost tables (CSV) and the cost model that prices layers from them.

File format (one row per measured (layer shape, bits); ``#`` lines are comments)::

    op,in_channels,out_channels,in_h,in_w,out_h,out_w,kernel_h,kernel_w,stride,groups,batch,w_bits,a_bits,latency_s,energy_j
    conv2d,16,16,32,32,32,32,3,3,1,1,1,8,8,0.00021,

Required columns: see ``REQUIRED``; ``energy_j`` and the bookkeeping columns in ``OPTIONAL`` may be
omitted or left blank (blank energy = not measured). For ``linear`` rows, blank spatial and kernel
cells mean 1. Every problem raises :class:`CostModelError` with one line
``file:line: column 'name': problem``.

Lookup (cost-models.md section 9): a layer matches rows with the same shape and batch. Missing bit
pairs of a matched shape are *interpolated* -- bilinearly in (w, a) for bit-serial hardware,
clamp-extrapolating with cost proportional to w*a outside the measured range -- or, for stepwise
hardware, *rounded up* to the cheapest measured pair with at least those bits (the kernel that
would really run). Unmatched shapes fall back to the analytic model scaled by the median
measured/analytic ratio over all rows (``extrapolated=True``). Results are then clamped to be at
least every measured cost of the same shape at fewer-or-equal bits, so costs never fall with
more bits.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cost_models.analytic import AnalyticModel
from cost_models.base import Cost, CostModel, check_bits, check_out_channels, weight_bytes_of
from hawq_search.exceptions import CostModelError
from hawq_search.graph.layers import LayerInfo

__all__ = [
    "REQUIRED",
    "OPTIONAL",
    "COLUMNS",
    "ShapeKey",
    "Measurement",
    "CostTable",
    "load_cost_table",
    "write_cost_table",
    "shape_key",
    "layer_from_key",
    "TableCostModel",
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


def shape_key(layer: LayerInfo, batch: int) -> ShapeKey | None:
    """Key of ``layer`` at ``batch``; None when the table format cannot express it."""
    if layer.op == "linear":
        return ShapeKey("linear", layer.in_channels, layer.out_channels, 1, 1, 1, 1, 1, 1, 1, 1, batch)  # fmt: skip
    if layer.stride[0] != layer.stride[1] or len(layer.input_shape) != 3:
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
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CostModelError(f"{src}: cannot read cost table ({e.strerror})") from None
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
    _check_monotone(table)
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


def _check_monotone(table: CostTable) -> None:
    """A cost that falls with more bits is a measurement or bookkeeping error: report it."""
    for per_shape in table.rows.values():
        for (w, a), m in sorted(per_shape.items(), key=lambda kv: kv[1].line):
            for (w2, a2), m2 in per_shape.items():
                if (w2, a2) == (w, a) or not (w2 <= w and a2 <= a):
                    continue
                for col in ("latency_s", "energy_j"):
                    hi, lo = getattr(m2, col), getattr(m, col)
                    if hi is not None and lo is not None and lo < hi:
                        raise _fail(
                            table.path, m.line, col,
                            f"{lo:g} at w_bits={w}, a_bits={a} is below {hi:g} at w_bits={w2}, "
                            f"a_bits={a2} on line {m2.line} (costs must not fall with more bits)",
                        )  # fmt: skip


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


# -- the model ----------------------------------------------------------------------------------


def _interp_1d(xs: list[int], x: int) -> tuple[int, int, float, float]:
    """Bracket ``x`` in sorted ``xs``: (x0, x1, weight of x1, clamp scale outside the range)."""
    if x <= xs[0]:
        return xs[0], xs[0], 0.0, x / xs[0]
    if x >= xs[-1]:
        return xs[-1], xs[-1], 0.0, x / xs[-1]
    x0 = max(v for v in xs if v <= x)
    x1 = min(v for v in xs if v >= x)
    t = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
    return x0, x1, t, 1.0


class TableCostModel(CostModel):
    """Measured costs where the table has them, the calibrated analytic model elsewhere."""

    def __init__(
        self, analytic: AnalyticModel, table: CostTable, *, interpolation: str = "stepwise"
    ) -> None:
        if interpolation not in ("bilinear", "stepwise"):
            raise ValueError(f"interpolation must be bilinear or stepwise, got {interpolation!r}")
        self.analytic = analytic
        self.table = table
        self.interpolation = interpolation
        self.name = analytic.name
        self.description = analytic.description
        self.batch = analytic.batch
        self._cache: dict[tuple, tuple[float, float, str, bool]] = {}
        self.latency_efficiency, self.energy_efficiency = self._fit_efficiency()

    # efficiency = median(measured / analytic) over every measured row
    def _fit_efficiency(self) -> tuple[float, float]:
        lat, en = [], []
        for key, per_shape in self.table.rows.items():
            model = replace(self.analytic, batch=key.batch)
            layer = layer_from_key(key)
            for (w, a), m in per_shape.items():
                c = model.layer_cost(layer, w, a)
                if c.latency_s > 0:
                    lat.append(m.latency_s / c.latency_s)
                if m.energy_j is not None and c.energy_j > 0:
                    en.append(m.energy_j / c.energy_j)
        self.energy_measured = bool(en)
        return (
            statistics.median(lat) if lat else 1.0,
            statistics.median(en) if en else 1.0,
        )

    def group_overhead(self, layer: LayerInfo) -> Cost:
        return self.analytic.group_overhead(layer)

    @property
    def static_w(self) -> float:
        return self.analytic.static_w

    def backend(self, layer: LayerInfo, w_bits: int, a_bits: int) -> str:
        """The measured row's ``backend`` that prices these bits ("" if not measured): tells a
        deployment which kernel the prediction assumed (int8 or the faster fp32 fallback)."""
        key = shape_key(layer, self.batch)
        per_shape = self.table.rows.get(key) if key is not None else None
        if not per_shape:
            return ""
        ok = [
            (m.latency_s, pw * pa, m)
            for (pw, pa), m in per_shape.items()
            if pw >= w_bits and pa >= a_bits
        ]
        return min(ok, key=lambda t: (t[0], t[1]))[2].backend if ok else ""

    def kernel_key(self, layer: LayerInfo, w_bits: int, a_bits: int) -> tuple:
        """The hardware's executed precision; bilinear tables price every bit-width on its own."""
        key = self.analytic.kernel_key(layer, w_bits, a_bits)
        return (key, w_bits) if self.interpolation == "bilinear" else (key,)

    def channel_quantum(self, layer: LayerInfo) -> int:
        return self.analytic.channel_quantum(layer)

    def layer_cost(
        self, layer: LayerInfo, w_bits: int, a_bits: int, *, out_channels: int | None = None
    ) -> Cost:
        check_bits(w_bits, a_bits)
        n = check_out_channels(layer, out_channels)
        sub = None
        if n < layer.out_channels and layer.groups == 1:
            sub = replace(
                layer, out_channels=n, output_shape=(n, *layer.output_shape[1:]),
                weight_shape=(n, *layer.weight_shape[1:]), params=layer.params_per_channel * n,
                macs=layer.macs_per_channel * n,
            )  # fmt: skip
        if n == layer.out_channels or (sub is not None and self._measured_shape(sub)):
            lat, en, bound, extra = self._whole(sub or layer, w_bits, a_bits)
        else:
            lat, en, bound, extra = self._scaled_sub_kernel(layer, w_bits, a_bits, n)
        an = self.analytic.layer_cost(layer, w_bits, a_bits, out_channels=n)
        return replace(
            an, latency_s=lat, energy_j=en, bound=bound, extrapolated=extra,
            weight_bytes=weight_bytes_of(layer, w_bits, n),
        )  # fmt: skip

    def _measured_shape(self, layer: LayerInfo) -> bool:
        key = shape_key(layer, self.batch)
        return key is not None and key in self.table.rows

    def _scaled_sub_kernel(
        self, layer: LayerInfo, w: int, a: int, n: int
    ) -> tuple[float, float, str, bool]:
        """Whole-layer cost split by the analytic model's share of the sub-kernel, overhead kept."""
        lat, en, bound, _ = self._whole(layer, w, a)
        over = self.group_overhead(layer)
        full = self.analytic.layer_cost(layer, w, a)
        part = self.analytic.layer_cost(layer, w, a, out_channels=n)

        def split(total: float, a_full: float, a_part: float, fixed: float) -> float:
            var_full = max(a_full - fixed, 0.0)
            share = (a_part - fixed) / var_full if var_full > 0 else n / layer.out_channels
            return fixed + max(total - fixed, 0.0) * min(max(share, 0.0), 1.0)

        return (
            split(lat, full.latency_s, part.latency_s, over.latency_s),
            split(en, full.energy_j, part.energy_j, over.energy_j),
            bound,
            True,
        )

    def _whole(self, layer: LayerInfo, w: int, a: int) -> tuple[float, float, str, bool]:
        key = shape_key(layer, self.batch)
        ck = (key if key is not None else layer, w, a)
        if ck not in self._cache:
            self._cache[ck] = self._lookup(layer, key, w, a)
        return self._cache[ck]

    def _lookup(
        self, layer: LayerInfo, key: ShapeKey | None, w: int, a: int
    ) -> tuple[float, float, str, bool]:
        per_shape = self.table.rows.get(key) if key is not None else None
        found = None
        if per_shape:
            if self.interpolation == "bilinear":
                found = self._bilinear(per_shape, w, a)
            if found is None:
                found = self._round_up(per_shape, w, a)
        if found is not None:
            lat, en, extra = found
            bound = "measured"
        else:
            c = self.analytic.layer_cost(layer, w, a)
            lat = c.latency_s * self.latency_efficiency
            # Without measured energies, energy follows the calibrated time (static power x t).
            en = c.energy_j * self.energy_efficiency if self.energy_measured else None
            bound, extra = c.bound, True
        if en is None:
            en = self.analytic.energy_at_latency(layer, w, a, lat)
        for (w2, a2), m in (per_shape or {}).items():  # never below a measured cheaper pair
            if w2 <= w and a2 <= a:
                lat = max(lat, m.latency_s)
                if m.energy_j is not None:
                    en = max(en, m.energy_j)
        return lat, en, bound, extra

    @staticmethod
    def _round_up(
        per_shape: dict[tuple[int, int], Measurement], w: int, a: int
    ) -> tuple[float, float | None, bool] | None:
        ok = [(m.latency_s, pw * pa, m) for (pw, pa), m in per_shape.items() if pw >= w and pa >= a]
        if not ok:
            return None
        m = min(ok, key=lambda t: (t[0], t[1]))[2]
        return m.latency_s, m.energy_j, False

    @staticmethod
    def _bilinear(
        per_shape: dict[tuple[int, int], Measurement], w: int, a: int
    ) -> tuple[float, float | None, bool] | None:
        ws = sorted({p[0] for p in per_shape})
        as_ = sorted({p[1] for p in per_shape})
        w0, w1, tw, sw = _interp_1d(ws, w)
        a0, a1, ta, sa = _interp_1d(as_, a)
        corners = [(w0, a0), (w1, a0), (w0, a1), (w1, a1)]
        if any(c not in per_shape for c in corners):
            return None
        weights = [(1 - tw) * (1 - ta), tw * (1 - ta), (1 - tw) * ta, tw * ta]
        lat = (
            sum(wt * per_shape[c].latency_s for wt, c in zip(weights, corners, strict=True))
            * sw
            * sa
        )
        energies = [per_shape[c].energy_j for c in corners]
        en = None
        if all(e is not None for e in energies):
            en = sum(wt * e for wt, e in zip(weights, energies, strict=True)) * sw * sa  # type: ignore[operator]
        return lat, en, (sw != 1.0 or sa != 1.0)
