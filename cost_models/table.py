"""User-measured per-layer cost tables and the cost model that prices layers from them.

The CSV format, its units, conventions and validation are in :mod:`cost_models.table_format`
(re-exported here) and ``PROFILE_FORMAT.md`` ("Measured cost tables").

Lookup: a layer matches rows with the same shape and batch. A requested pair (w, a) of a matched
shape is priced as follows, and :meth:`TableCostModel.price_source` says which case applied:

* **measured** -- the pair has a row, and no pair with at least its bits is cheaper;
* **rounded up** -- priced as the cheapest measured pair with at least those bits (for both w and
  a): the kernel that would really run. This is how stepwise hardware (GPU, NPU, CPU,
  BitFusion) fills missing pairs, and how every table treats a row that costs more than a row
  with more bits (measured tables may say int4 is slower than int8; the int8 kernel then runs);
* **interpolated** -- bit-serial hardware (``interpolation: bilinear``): bilinear in (w, a)
  between measured pairs, each first replaced by the cheapest measured pair covering it;
* **extrapolated** (``Cost.extrapolated``) -- outside the measurements: bilinear clamp
  extrapolation with cost proportional to w*a, bits above every measured pair, unmatched shapes
  (the analytic model scaled by the median measured/analytic ratio over all rows), and
  sub-kernels of per-channel mixed layers, whose cost is the measured whole-layer cost split by
  the analytic model's share (the table has per-tensor rows only); their ``bound`` is then the
  analytic one, not ``"measured"``.

Costs never fall with more bits: an analytic fallback is clamped to be at least the cost of
every measured-priced pair below it. Energies are measured (``Cost.measured_energy_j``) only
where the priced row has an ``energy_j`` value; otherwise they are the profile's energy model at
the measured time (often static power x time, see ``CostModel.energy_note``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from cost_models.analytic import FLOAT_BITS, AnalyticModel
from cost_models.base import Cost, CostModel, check_bits, check_out_channels, weight_bytes_of
from cost_models.table_format import (
    COLUMNS,
    OPTIONAL,
    REQUIRED,
    CostTable,
    Measurement,
    ShapeKey,
    layer_from_key,
    load_cost_table,
    shape_key,
    write_cost_table,
)
from hawq_search.core.layers import LayerInfo

__all__ = [
    "REQUIRED",
    "OPTIONAL",
    "COLUMNS",
    "SOURCES",
    "ShapeKey",
    "Measurement",
    "CostTable",
    "load_cost_table",
    "write_cost_table",
    "shape_key",
    "layer_from_key",
    "TableCostModel",
]

SOURCES = ("measured", "rounded-up", "interpolated", "extrapolated")
PerShape = dict[tuple[int, int], Measurement]


@dataclass(frozen=True)
class _Cell:
    """The cheapest measured pair covering a request: its latency, the cheapest covering
    energy (None if none measured), the pair whose latency it is, and that row's backend."""

    latency_s: float
    energy_j: float | None
    pair: tuple[int, int]
    backend: str


@dataclass(frozen=True)
class _Priced:
    latency_s: float
    energy_j: float
    bound: str
    extrapolated: bool
    source: str  # one of SOURCES
    energy_measured: bool


def _cover(per_shape: PerShape, w: int, a: int) -> _Cell | None:
    """Cheapest measured pair with at least ``w`` and ``a`` bits (ties: fewer bits)."""
    ok = [(m.latency_s, q[0] * q[1], q, m) for q, m in per_shape.items() if q[0] >= w and q[1] >= a]
    if not ok:
        return None
    lat, _, pair, m = min(ok, key=lambda t: (t[0], t[1]))
    energies = [t[3].energy_j for t in ok if t[3].energy_j is not None]
    return _Cell(lat, min(energies) if energies else None, pair, m.backend)


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
        self._cache: dict[tuple, _Priced] = {}
        self.has_measured_energy = table.has_energy()
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
        return (
            statistics.median(lat) if lat else 1.0,
            statistics.median(en) if en else 1.0,
        )

    def group_overhead(self, layer: LayerInfo) -> Cost:
        return self.analytic.group_overhead(layer)

    @property
    def static_w(self) -> float:
        return self.analytic.static_w

    def energy_note(self) -> str:
        return self.analytic.energy_note()

    def _rows_of(self, layer: LayerInfo) -> PerShape | None:
        key = shape_key(layer, self.batch)
        return self.table.rows.get(key) if key is not None else None

    def is_measured(self, layer: LayerInfo) -> bool:
        """True when the table has rows of this layer's shape at the model's batch."""
        return bool(self._rows_of(layer))

    def covers(self, w_bits: int, a_bits: int) -> bool:
        """True when some row of the table (any shape) has at least these bits."""
        return any(w >= w_bits and a >= a_bits for p in self.table.rows.values() for w, a in p)

    def backend(self, layer: LayerInfo, w_bits: int, a_bits: int) -> str:
        """The measured row's ``backend`` that prices these bits ("" if not measured): tells a
        deployment which kernel the prediction assumed (int8 or the faster fp32 fallback)."""
        per_shape = self._rows_of(layer)
        cell = _cover(per_shape, w_bits, a_bits) if per_shape else None
        return cell.backend if cell else ""

    def kernel_key(self, layer: LayerInfo, w_bits: int, a_bits: int) -> tuple:
        """The hardware's executed precision; bilinear tables price every bit-width on its own."""
        key = self.analytic.kernel_key(layer, w_bits, a_bits)
        return (key, w_bits) if self.interpolation == "bilinear" else (key,)

    def channel_quantum(self, layer: LayerInfo) -> int:
        return self.analytic.channel_quantum(layer)

    def _sub_layer(self, layer: LayerInfo, n: int) -> LayerInfo | None:
        """The layer restricted to ``n`` output channels, when the table could have measured it."""
        if n == layer.out_channels or layer.groups != 1:
            return None
        return replace(
            layer, out_channels=n, output_shape=(n, *layer.output_shape[1:]),
            weight_shape=(n, *layer.weight_shape[1:]), params=layer.params_per_channel * n,
            macs=layer.macs_per_channel * n,
        )  # fmt: skip

    def _priced(self, layer: LayerInfo, w: int, a: int, n: int) -> _Priced:
        sub = self._sub_layer(layer, n)
        if n == layer.out_channels:
            return self._whole(layer, w, a)
        if sub is not None and self.is_measured(sub):
            return self._whole(sub, w, a)
        return self._scaled_sub_kernel(layer, w, a, n)

    def layer_cost(
        self, layer: LayerInfo, w_bits: int, a_bits: int, *, out_channels: int | None = None
    ) -> Cost:
        check_bits(w_bits, a_bits)
        n = check_out_channels(layer, out_channels)
        p = self._priced(layer, w_bits, a_bits, n)
        an = self.analytic.layer_cost(layer, w_bits, a_bits, out_channels=n)
        return replace(
            an, latency_s=p.latency_s, energy_j=p.energy_j, bound=p.bound,
            extrapolated=p.extrapolated, weight_bytes=weight_bytes_of(layer, w_bits, n),
            measured_energy_j=p.energy_j if p.energy_measured else 0.0,
        )  # fmt: skip

    def price_source(
        self, layer: LayerInfo, w_bits: int, a_bits: int, *, out_channels: int | None = None
    ) -> str:
        """How ``layer_cost`` priced these bits: one of :data:`SOURCES`."""
        check_bits(w_bits, a_bits)
        n = check_out_channels(layer, out_channels)
        return self._priced(layer, w_bits, a_bits, n).source

    def _scaled_sub_kernel(self, layer: LayerInfo, w: int, a: int, n: int) -> _Priced:
        """Whole-layer cost split by the analytic model's share of the sub-kernel, overhead kept.

        The table has per-tensor rows only, so this is an extrapolation: the bound is the
        analytic sub-kernel's, the energy counts as not measured."""
        whole = self._whole(layer, w, a)
        over = self.group_overhead(layer)
        full = self.analytic.layer_cost(layer, w, a)
        part = self.analytic.layer_cost(layer, w, a, out_channels=n)

        def split(total: float, a_full: float, a_part: float, fixed: float) -> float:
            var_full = max(a_full - fixed, 0.0)
            share = (a_part - fixed) / var_full if var_full > 0 else n / layer.out_channels
            return fixed + max(total - fixed, 0.0) * min(max(share, 0.0), 1.0)

        return _Priced(
            split(whole.latency_s, full.latency_s, part.latency_s, over.latency_s),
            split(whole.energy_j, full.energy_j, part.energy_j, over.energy_j),
            part.bound, True, "extrapolated", False,
        )  # fmt: skip

    def _whole(self, layer: LayerInfo, w: int, a: int) -> _Priced:
        key = shape_key(layer, self.batch)
        ck = (key if key is not None else layer, w, a)
        if ck not in self._cache:
            self._cache[ck] = self._lookup(layer, self._rows_of(layer), w, a)
        return self._cache[ck]

    def _lookup(self, layer: LayerInfo, per_shape: PerShape | None, w: int, a: int) -> _Priced:
        found = None
        if per_shape:
            if self.interpolation == "bilinear":
                found = self._bilinear(per_shape, w, a)
            if found is None:
                found = self._round_up(per_shape, w, a)
        if found is None:
            return self._fallback(layer, per_shape, w, a)
        lat, en, source = found
        measured = en is not None and source != "extrapolated"
        if en is None:
            en = self.analytic.energy_at_latency(layer, w, a, lat)
            en = max(en, self._floor(per_shape, w, a)[1])
        return _Priced(lat, en, "measured", source == "extrapolated", source, measured)

    def _fallback(self, layer: LayerInfo, per_shape: PerShape | None, w: int, a: int) -> _Priced:
        """Unmeasured shape or bits above every measured pair: the calibrated analytic model,
        never below a measured-priced pair with fewer bits."""
        c = self.analytic.layer_cost(layer, w, a)
        floor_lat, floor_en = self._floor(per_shape, w, a)
        lat = max(c.latency_s * self.latency_efficiency, floor_lat)
        if self.has_measured_energy:
            en = c.energy_j * self.energy_efficiency
        else:  # energy follows the calibrated time (often static power x time)
            en = self.analytic.energy_at_latency(layer, w, a, lat)
        return _Priced(lat, max(en, floor_en), c.bound, True, "extrapolated", False)

    @staticmethod
    def _floor(per_shape: PerShape | None, w: int, a: int) -> tuple[float, float]:
        """The highest measured-priced cost of a pair below (w, a): every pair with fewer bits
        than (w, a) is covered by some row q, so the pair (min(w, q_w), min(a, q_a)) bounds it."""
        lat = en = 0.0
        if not per_shape:
            return lat, en
        for qw, qa in per_shape:
            cell = _cover(per_shape, min(w, qw), min(a, qa))
            if cell is not None:
                lat = max(lat, cell.latency_s)
                en = max(en, cell.energy_j or 0.0)
        return lat, en

    @staticmethod
    def _round_up(per_shape: PerShape, w: int, a: int) -> tuple[float, float | None, str] | None:
        cell = _cover(per_shape, w, a)
        if cell is None:
            return None
        source = "measured" if cell.pair == (w, a) else "rounded-up"
        return cell.latency_s, cell.energy_j, source

    @staticmethod
    def _bilinear(per_shape: PerShape, w: int, a: int) -> tuple[float, float | None, str] | None:
        ws = sorted({p[0] for p in per_shape})
        as_ = sorted({p[1] for p in per_shape})
        w0, w1, tw, sw = _interp_1d(ws, w)
        a0, a1, ta, sa = _interp_1d(as_, a)
        corners = [(w0, a0), (w1, a0), (w0, a1), (w1, a1)]
        if any(c not in per_shape for c in corners):
            return None
        cells = [_cover(per_shape, *c) for c in corners]  # falling rows: the cheaper kernel
        weights = [(1 - tw) * (1 - ta), tw * (1 - ta), (1 - tw) * ta, tw * ta]
        scale = sw * sa
        lat = sum(wt * c.latency_s for wt, c in zip(weights, cells, strict=True)) * scale  # type: ignore[union-attr]
        energies = [c.energy_j for c in cells]  # type: ignore[union-attr]
        en = None
        if all(e is not None for e in energies):
            en = sum(wt * e for wt, e in zip(weights, energies, strict=True)) * scale  # type: ignore[operator]
        if scale != 1.0:
            source = "extrapolated"
        elif tw or ta:
            source = "interpolated"
        else:
            source = "measured" if cells[0].pair == (w, a) else "rounded-up"  # type: ignore[union-attr]
        return lat, en, source


def is_unquantized_gap(model: CostModel, w_bits: int, a_bits: int) -> bool:
    """True when (w, a) is unquantized (16/32 bits) and ``model`` is a table with no row that
    high: such costs come from the fallback by design and are not worth flagging per layer."""
    if not isinstance(model, TableCostModel):
        return False
    return (w_bits in FLOAT_BITS or a_bits in FLOAT_BITS) and not model.covers(w_bits, a_bits)
