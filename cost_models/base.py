"""The cost record and the interface every hardware cost model implements.

Units and scope of a :class:`Cost` (one layer, or one sub-kernel of a layer):

* ``latency_s`` and ``energy_j`` -- one inference of a batch of ``CostModel.batch`` samples, the
  quantities a hardware budget constrains;
* ``weight_bytes`` -- stored weights with the exact accounting of :mod:`cost_models.size`
  (dense packing + fp32 scale and bias per channel), independent of the hardware, so a size
  budget means the same thing under every cost model;
* ``bops`` -- ``MACs * w_bits * a_bits`` for one sample (HAWQ-V3 / AIMET), as in ``size.layer_bops``;
* ``act_bytes`` -- bytes of input and output activations the kernel reads and writes for one
  sample at the nominal bits (a peak-RAM budget takes the max over layers, a traffic budget the sum);
* ``bound`` -- what limited the latency: ``"compute"``, ``"memory"`` or ``"measured"``;
* ``extrapolated`` -- True when a measured model had to leave its measurements (fallback or
  sub-kernel scaling), so callers can flag low-confidence plans;
* ``measured_energy_j`` -- the part of ``energy_j`` read from a measured energy column (0 for
  analytic models, and for energy computed as static power x time); ``energy_measured`` says
  whether all of it was. Both add up like the other fields.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from cost_models.size import channel_bits_cost, layer_weight_bytes
from hawq_search.core.layers import LayerInfo

__all__ = ["Cost", "CostModel", "BOUNDS", "check_bits", "model_fingerprint"]

BOUNDS = ("compute", "memory", "measured")
MAX_BITS = 32


@dataclass(frozen=True)
class Cost:
    """Additive cost of a layer or sub-kernel; see the module docstring for units."""

    latency_s: float
    energy_j: float
    weight_bytes: float
    bops: float
    act_bytes: float
    bound: str
    extrapolated: bool = False
    measured_energy_j: float = 0.0

    @property
    def energy_measured(self) -> bool:
        """True when all of ``energy_j`` comes from measured energies (not static power x time,
        not an analytic estimate)."""
        return self.measured_energy_j > 0 and self.measured_energy_j >= self.energy_j * (1 - 1e-9)

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")

    @classmethod
    def zero(cls, bound: str = "compute") -> Cost:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, bound)

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        # The summed latency is "limited by" whichever part dominates it.
        bound = self.bound if self.latency_s >= other.latency_s else other.bound
        return Cost(
            latency_s=self.latency_s + other.latency_s,
            energy_j=self.energy_j + other.energy_j,
            weight_bytes=self.weight_bytes + other.weight_bytes,
            bops=self.bops + other.bops,
            act_bytes=self.act_bytes + other.act_bytes,
            bound=bound,
            extrapolated=self.extrapolated or other.extrapolated,
            measured_energy_j=self.measured_energy_j + other.measured_energy_j,
        )

    def __radd__(self, other: object) -> Cost:
        # Lets ``sum(costs)`` work with its default start value 0.
        if other == 0:
            return self
        return NotImplemented

    def scaled(self, factor: float) -> Cost:
        """Every additive field multiplied by ``factor`` (bound and flag unchanged)."""
        return replace(
            self,
            latency_s=self.latency_s * factor,
            energy_j=self.energy_j * factor,
            weight_bytes=self.weight_bytes * factor,
            bops=self.bops * factor,
            act_bytes=self.act_bytes * factor,
            measured_energy_j=self.measured_energy_j * factor,
        )


def model_fingerprint(layers: Sequence[LayerInfo], batch: int) -> str:
    """Short hash of a model's quantizable layer shapes and the batch: names a measured
    ``other_ops`` time in a profile so that it is used for that model only."""
    parts = [str(batch)]
    for layer in sorted(layers, key=lambda lay: lay.index):
        parts.append(
            f"{layer.op}:{layer.input_shape}:{layer.output_shape}:{layer.kernel_size}:"
            f"{layer.stride}:{layer.padding}:{layer.groups}"
        )
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def check_bits(w_bits: int, a_bits: int) -> None:
    """Reject bit-widths no model can price (a programming error, not a user input error)."""
    for label, b in (("w_bits", w_bits), ("a_bits", a_bits)):
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS:
            raise ValueError(f"{label} must be an int in 1..{MAX_BITS}, got {b!r}")


def check_out_channels(layer: LayerInfo, out_channels: int | None) -> int:
    """The sub-kernel width, defaulting to the whole layer."""
    if out_channels is None:
        return layer.out_channels
    if not 1 <= out_channels <= layer.out_channels:
        raise ValueError(
            f"{layer.name}: out_channels must be in 1..{layer.out_channels}, got {out_channels}"
        )
    return out_channels


def weight_bytes_of(layer: LayerInfo, w_bits: int, n: int) -> float:
    """Size-budget bytes of ``n`` channels at ``w_bits``: exact for the whole layer, linear otherwise.

    The linear form (``n * channel_bits_cost``) is what the ILP adds up per bit-width group; it
    differs from the exact layer size by the per-layer ``ceil`` (< 1 byte).
    """
    if n == layer.out_channels:
        return float(layer_weight_bytes(layer, [w_bits] * n))
    return n * channel_bits_cost(layer, w_bits)


class CostModel(ABC):
    """Prices one layer at one (w_bits, a_bits); bits 16 and 32 mean unquantized (float).

    Per-channel mixed plans are priced as one sub-kernel per *executed* precision: channels
    whose :meth:`kernel_key` is equal run in one kernel (an int8-only NPU runs W2..W8 channels
    together). ``layer_cost(layer, w, a, out_channels=n)`` is the whole cost of a kernel computing
    ``n`` of the layer's output channels, *including* one :meth:`group_overhead`. Costs are
    non-decreasing in ``w_bits`` and in ``a_bits``.
    """

    name: str = "cost-model"
    description: str = ""
    batch: int = 1
    # model_fingerprint -> measured seconds of a model's other ops (profile key ``other_ops``)
    other_ops: dict[str, float] = {}  # noqa: RUF012 - replaced, never mutated, per instance

    @abstractmethod
    def layer_cost(
        self, layer: LayerInfo, w_bits: int, a_bits: int, *, out_channels: int | None = None
    ) -> Cost:
        """Cost of ``layer`` (or of a sub-kernel with ``out_channels`` channels) at these bits."""

    def kernel_key(self, layer: LayerInfo, w_bits: int, a_bits: int) -> Hashable:
        """Which kernel runs channels at ``(w_bits, a_bits)``: equal keys share one sub-kernel.

        Models whose hardware snaps bits (fixed pairs, containers) override this so that, e.g.,
        W2 and W8 channels on int8 hardware pay one overhead and one tile padding, not two. The
        default, one kernel per nominal weight bit-width, is right for hardware that runs every
        bit-width at its own speed.
        """
        return (w_bits, a_bits)

    def group_overhead(self, layer: LayerInfo) -> Cost:
        """Fixed cost every sub-kernel pays regardless of its width (launch, pipeline fill).

        Independent of bits, so the ILP can charge it once per used bit-width group through an
        indicator variable. Zero unless the model says otherwise.
        """
        return Cost.zero()

    def fixed_cost(self, layers: Sequence[LayerInfo]) -> Cost:
        """Cost of everything but the quantizable layers (BatchNorm, activations, adds, pooling,
        framework dispatch), independent of the plan: measured for this model by ``cost
        profile`` (profile key ``other_ops``), else zero -- accelerators fuse those ops."""
        lat = self.other_ops.get(model_fingerprint(layers, self.batch), 0.0)
        static = float(getattr(self, "static_w", 0.0) or 0.0)
        return Cost(lat, static * lat, 0.0, 0.0, 0.0, "measured" if lat else "compute")

    def energy_note(self) -> str:
        """How energies that are not measured are obtained, for people reading a cost: e.g.
        ``"static power x time"`` when the model has nothing but a power figure."""
        return "estimated by the cost model"

    def channel_quantum(self, layer: LayerInfo) -> int:
        """Output channels one compute tile spans: a sub-kernel of ``n`` channels costs as much
        as ``ceil(n / q) * q``. The ILP counts per-channel groups in these tiles. 1 = no tiling."""
        return 1

    def per_channel_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> Cost:
        """Average cost of one output channel beyond the group overhead (the ILP's slope).

        ``group_overhead + out_channels * per_channel_cost`` equals the whole-layer cost in
        latency, energy, BOPs and activation bytes; ``weight_bytes`` is ``channel_bits_cost``.
        """
        full = self.layer_cost(layer, w_bits, a_bits)
        over = self.group_overhead(layer)
        c = layer.out_channels
        energy = max(full.energy_j - over.energy_j, 0.0) / c
        share = full.measured_energy_j / full.energy_j if full.energy_j > 0 else 0.0
        return Cost(
            latency_s=max(full.latency_s - over.latency_s, 0.0) / c,
            energy_j=energy,
            weight_bytes=channel_bits_cost(layer, w_bits),
            bops=full.bops / c,
            act_bytes=full.act_bytes / c,
            bound=full.bound,
            extrapolated=full.extrapolated,
            measured_energy_j=energy * share,
        )

    def plan_cost(self, layer: LayerInfo, channel_bits: Sequence[int], a_bits: int) -> Cost:
        """Exact cost of a per-channel plan: one sub-kernel per executed precision.

        Channels with equal :meth:`kernel_key` form one sub-kernel, priced at the widest nominal
        bits among them (equal keys normally mean equal costs; the widest is the safe choice when
        a measured table says otherwise). ``weight_bytes`` is the exact ``layer_weight_bytes`` and
        ``bops`` the exact sum over channels.
        """
        if len(channel_bits) != layer.out_channels:
            raise ValueError(
                f"{layer.name}: {len(channel_bits)} channel bit-widths for "
                f"{layer.out_channels} channels"
            )
        kernels: dict[Hashable, list[int]] = {}
        for b in channel_bits:
            kernels.setdefault(self.kernel_key(layer, b, a_bits), []).append(b)
        total = sum(
            (
                self.layer_cost(layer, max(bits), a_bits, out_channels=len(bits))
                for bits in kernels.values()
            ),
            Cost.zero(),
        )
        return replace(
            total,
            weight_bytes=float(layer_weight_bytes(layer, channel_bits)),
            bops=float(layer.macs_per_channel * sum(channel_bits) * a_bits),
        )

    def model_cost(
        self,
        layers: Sequence[LayerInfo],
        channel_bits: Mapping[str, Sequence[int]],
        act_bits: Mapping[str, int],
    ) -> Cost:
        """Exact cost of a whole plan: :meth:`plan_cost` of every layer (``channel_bits`` by
        layer name, ``act_bits`` by activation group) plus :meth:`fixed_cost`."""
        per_layer = (
            self.plan_cost(layer, channel_bits[layer.name], act_bits[layer.act_group])
            for layer in layers
        )
        return sum(per_layer, Cost.zero()) + self.fixed_cost(layers)

    def kernel_groups(self, layer: LayerInfo, channel_bits: Sequence[int], a_bits: int) -> int:
        """Number of sub-kernels :meth:`plan_cost` charges for this plan."""
        return len({self.kernel_key(layer, b, a_bits) for b in channel_bits})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch={self.batch})"
