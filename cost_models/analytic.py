"""Analytic (roofline-style) cost models, one class per kind of datapath.

Common skeleton (the roofline of MAESTRO, Timeloop, Vela and the BitFusion simulator; the profile
keys are documented in ``PROFILE_FORMAT.md``)::

    (w^, a^)  = snap(w, a)                      # precision the datapath really executes
    t_c       = compute law of the kind (below) / efficiency
    bits_L    = bits moved through memory level L (container bits, not nominal bits)
    t_m       = max_L bits_L / (8 * BW_L)
    latency   = max(t_c, t_m) + overhead        # t_c + t_m + overhead if not double-buffered
    energy    = E_mac(w^, a^) + sum_L bits_L * e_bit(L) + P_static * latency

Traffic per level: weights at the storage container of
``w`` bits, input and output activations at the container of ``a`` bits (the consumer's bits are
unknown per layer, so outputs are assumed to keep the input's precision). A level with an on-chip
``buffer_bytes`` that holds both weights and inputs re-reads one of them when the other does not
fit, in the cheaper loop order (BitFusion's loop-promotion logic):
``min(W + A*ceil(W/buf), A + W*ceil(A/buf)) + O``.

Every term is non-decreasing in the snapped bits, snapping is non-decreasing in the nominal bits,
so every cost is non-decreasing in ``w_bits`` and ``a_bits``.

Unquantized operands (16 or 32 bits): integer engines (bit-serial, BitFusion) price them as
``float_bits``-bit fixed point (default 16, the baseline precision of Stripes/Loom/BitFusion);
fixed-pair NPUs run them on their widest pair times ``float_slowdown``; GPUs and CPUs use their
fp16/fp32 rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cost_models.base import Cost, CostModel, check_bits, check_out_channels, weight_bytes_of
from cost_models.shapes import Gemm, gemm_of
from hawq_search.core.layers import LayerInfo

__all__ = [
    "MemoryLevel",
    "MacEnergy",
    "AnalyticModel",
    "BitSerialModel",
    "BitFusionModel",
    "FixedNPUModel",
    "GPUTensorCoreModel",
    "CPUModel",
    "FLOAT_BITS",
    "bitfusion_perf_factor",
]

FLOAT_BITS = (16, 32)
TENSORS = ("weights", "inputs", "outputs")


@dataclass(frozen=True)
class MemoryLevel:
    """One memory level: its bandwidth, access energy and the tensors that cross it."""

    name: str
    bandwidth_Bps: float
    pj_per_bit: float = 0.0
    holds: tuple[str, ...] = TENSORS
    buffer_bytes: float | None = None  # on-chip buffer that tiles this level's traffic


@dataclass(frozen=True)
class MacEnergy:
    """Energy of the arithmetic, as a function of the snapped bits (``PROFILE_FORMAT.md``, ``energy``).

    * ``none`` -- no dynamic arithmetic model (whole-board power goes in ``static_w``);
    * ``fixed_width`` -- ``c0 + c1*b + c2*b^2`` pJ per MAC, ``b = max(w, a)``; default fit to the
      45 nm PEs of hsharma35/bitfusion ``results/systolic_array_synth.csv``;
    * ``multiplier`` -- ``mul8*(w*a)/64 + add32*(acc_bits/32)`` pJ per MAC: a multiplier scales
      with the product of operand widths, an adder linearly (Horowitz, ISSCC 2014);
    * ``per_mac`` -- a constant ``pj`` per MAC at any supported pair (e.g. 2 TOPS/W => 1 pJ/MAC);
    * ``per_unit_cycle`` -- ``pj`` per processing unit per busy cycle, times units times compute
      cycles (BitFusion's ``(cycles - stalls) * core_dyn_energy``; bit-serial lanes), so array
      padding costs energy too.
    """

    model: str = "none"
    c0: float = 0.0265
    c1: float = 0.0107
    c2: float = 0.00292
    mul8_pj: float = 0.2
    add32_pj: float = 0.1
    acc_bits: int = 32
    pj: float = 0.0

    def per_mac_pj(self, w: int, a: int) -> float:
        if self.model == "fixed_width":
            b = max(w, a)
            return self.c0 + self.c1 * b + self.c2 * b * b
        if self.model == "multiplier":
            return self.mul8_pj * (w * a) / 64 + self.add32_pj * self.acc_bits / 32
        if self.model == "per_mac":
            return self.pj
        return 0.0


@dataclass(repr=False)
class AnalyticModel(CostModel):
    """Shared roofline skeleton; subclasses supply :meth:`snap` and :meth:`compute`."""

    name: str = "analytic"
    description: str = ""
    batch: int = 1
    clock_hz: float | None = None
    memory: tuple[MemoryLevel, ...] = ()
    storage_containers: tuple[int, ...] | None = None  # None = dense (exactly b bits)
    mac_energy: MacEnergy = field(default_factory=MacEnergy)
    static_w: float = 0.0
    overhead_s: float = 0.0
    double_buffered: bool = True
    efficiency: float = 1.0
    float_bits: int = 16
    kind: str = "analytic"

    # -- hooks -------------------------------------------------------------------------------
    def snap(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        """Precision pair the datapath executes for nominal ``(w_bits, a_bits)``."""
        raise NotImplementedError

    def compute(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> tuple[float, float | None]:
        """Compute time in seconds at snapped bits, and busy array cycles if the law counts them."""
        raise NotImplementedError

    def rate_factor(self, w_bits: int, a_bits: int) -> float:
        """Slow-down of the executed pair relative to the compute law (1 unless the kind says)."""
        return 1.0

    def units(self) -> int:
        """Processing units that ``per_unit_cycle`` energy charges per busy cycle."""
        return 1

    def kernel_key(self, layer: LayerInfo, w_bits: int, a_bits: int) -> tuple:
        """The executed pair, its rate and the storage containers: everything the cost depends
        on besides the channel count, so equal keys mean equal costs and one shared kernel."""
        return (
            self.snap(w_bits, a_bits),
            self.rate_factor(w_bits, a_bits),
            self.storage_bits(w_bits),
            self.storage_bits(a_bits),
        )

    # -- shared parts ------------------------------------------------------------------------
    def storage_bits(self, bits: int) -> int:
        """Bits a value occupies in memory: the smallest container >= bits (dense if none)."""
        if not self.storage_containers:
            return bits
        for c in self.storage_containers:
            if c >= bits:
                return c
        return bits

    def traffic_bits(self, g: Gemm, w_bits: int, a_bits: int) -> dict[str, float]:
        """Bits crossing each memory level (see module docstring)."""
        wb = g.n_weights * self.storage_bits(w_bits)
        ib = g.n_inputs * self.storage_bits(a_bits)
        ob = g.n_outputs * self.storage_bits(a_bits)
        out: dict[str, float] = {}
        for level in self.memory:
            has_w, has_i = "weights" in level.holds, "inputs" in level.holds
            bits = ob if "outputs" in level.holds else 0.0
            if has_w and has_i and level.buffer_bytes:
                buf = level.buffer_bytes * 8
                bits += min(wb + ib * math.ceil(wb / buf), ib + wb * math.ceil(ib / buf))
            else:
                bits += (wb if has_w else 0.0) + (ib if has_i else 0.0)
            out[level.name] = bits
        return out

    def cycles_to_s(self, cycles: float) -> float:
        if not self.clock_hz:
            raise ValueError(f"{self.name}: this law counts cycles, so the profile needs clock_hz")
        return cycles / self.clock_hz

    def dynamic_energy_j(
        self, g: Gemm, layer: LayerInfo, w_bits: int, a_bits: int
    ) -> tuple[float, float, float, str]:
        """(dynamic energy J, compute s, memory s, bound) -- everything but static power."""
        ws, as_ = self.snap(w_bits, a_bits)
        t_c, cycles = self.compute(g, layer, ws, as_)
        slow = self.rate_factor(w_bits, a_bits)
        t_c *= slow / self.efficiency
        cycles = None if cycles is None else cycles * slow
        traffic = self.traffic_bits(g, w_bits, a_bits)
        t_m = max(
            (traffic[lv.name] / 8 / lv.bandwidth_Bps for lv in self.memory if lv.bandwidth_Bps),
            default=0.0,
        )
        if self.mac_energy.model == "per_unit_cycle":
            busy = cycles if cycles is not None else t_c * (self.clock_hz or 0.0)
            e_mac = busy * self.units() * self.mac_energy.pj
        else:
            e_mac = g.macs * self.mac_energy.per_mac_pj(ws, as_)
        e_mem = sum(traffic[lv.name] * lv.pj_per_bit for lv in self.memory)
        bound = "compute" if t_c >= t_m else "memory"
        return (e_mac + e_mem) * 1e-12, t_c, t_m, bound

    def layer_cost(
        self, layer: LayerInfo, w_bits: int, a_bits: int, *, out_channels: int | None = None
    ) -> Cost:
        check_bits(w_bits, a_bits)
        n = check_out_channels(layer, out_channels)
        g = gemm_of(layer, self.batch, n)
        e_dyn, t_c, t_m, bound = self.dynamic_energy_j(g, layer, w_bits, a_bits)
        body = max(t_c, t_m) if self.double_buffered else t_c + t_m
        latency = body + self.overhead_s
        return Cost(
            latency_s=latency,
            energy_j=e_dyn + self.static_w * latency,
            weight_bytes=weight_bytes_of(layer, w_bits, n),
            bops=float(layer.macs_per_channel * n * w_bits * a_bits),
            act_bytes=(g.n_inputs + g.n_outputs) * a_bits / 8 / self.batch,
            bound=bound,
        )

    def energy_at_latency(
        self, layer: LayerInfo, w_bits: int, a_bits: int, latency_s: float, n: int | None = None
    ) -> float:
        """Energy if the kernel took ``latency_s`` (a measured time): dynamic + static * time."""
        g = gemm_of(layer, self.batch, n)
        return self.dynamic_energy_j(g, layer, w_bits, a_bits)[0] + self.static_w * latency_s

    def group_overhead(self, layer: LayerInfo) -> Cost:
        return Cost(self.overhead_s, self.static_w * self.overhead_s, 0.0, 0.0, 0.0, "compute")

    def energy_note(self) -> str:
        """``"static power x time"`` when the profile has no arithmetic or memory energy figures,
        else ``"analytic estimate"``; ``"not modelled"`` when it has no energy figure at all."""
        dynamic = self.mac_energy.model != "none" or any(lv.pj_per_bit for lv in self.memory)
        if dynamic:
            return "analytic estimate"
        return "static power x time" if self.static_w else "not modelled"

    def utilisation(self, g: Gemm, dm: int, dk: int, dn: int) -> float:
        """U = MKN / (ceil(M/Dm)Dm * ceil(K/Dk)Dk * ceil(N/Dn)Dn): share of array lanes doing work."""
        padded = math.ceil(g.m / dm) * dm * math.ceil(g.k / dk) * dk * math.ceil(g.n / dn) * dn
        return g.m * g.k * g.n / padded

    def _int_bits(self, b: int) -> int:
        """Integer engines run an unquantized operand as ``float_bits`` fixed point."""
        return self.float_bits if b in FLOAT_BITS else b


@dataclass(repr=False)
class BitSerialModel(AnalyticModel):
    """Bit-serial matrix engine (BISMO, Loom; Stripes/UNPU when one operand is parallel).

    Law (EECS-NTNU/bismo; Loom, DAC 2018, arXiv 1706.07853)::

        cycles = g * ceil(M/Dm) * ceil(K/Dk) * ceil(N/Dn) * f(w, a)
        f = w*a (both serial) | w*ceil(a/P) (weights serial) | ceil(w/P)*a (activations serial)

    with P = ``parallel_bits`` of the parallel operand. ``depthwise_law="activation_serial"``
    uses ``ceil(M/Dm) * C * a`` for depthwise layers, the law fitted to HAQ's shipped BISMO cloud
    table (mit-han-lab/haq, weight bit-planes ride on idle Dn lanes). Any bit-width runs at its
    own speed: no snapping besides floats -> ``float_bits``.
    """

    dm: int = 16
    dk: int = 128
    dn: int = 16
    serial: str = "both"  # both | weights | activations
    parallel_bits: int = 16
    depthwise_law: str = "gemm"  # gemm | activation_serial
    kind: str = "bit_serial"

    def snap(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        return self._int_bits(w_bits), self._int_bits(a_bits)

    def bit_factor(self, w: int, a: int) -> int:
        if self.serial == "weights":
            return w * math.ceil(a / self.parallel_bits)
        if self.serial == "activations":
            return math.ceil(w / self.parallel_bits) * a
        return w * a

    def cycles(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> int:
        if layer.is_depthwise and self.depthwise_law == "activation_serial":
            return math.ceil(g.m / self.dm) * g.groups * a
        tiles = math.ceil(g.m / self.dm) * math.ceil(g.k / self.dk) * math.ceil(g.n / self.dn)
        return g.groups * tiles * self.bit_factor(w, a)

    def compute(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> tuple[float, float | None]:
        c = self.cycles(g, layer, w, a)
        return self.cycles_to_s(c), float(c)

    def channel_quantum(self, layer: LayerInfo) -> int:
        """Output channels map to the array's Dn lanes."""
        return self.dn

    def units(self) -> int:
        return self.dm * self.dk * self.dn


def bitfusion_perf_factor(w: int, a: int, pmax: int = 8, pmin: int = 2) -> float:
    """MACs per Fusion Unit per cycle: floor(pmax/max(a,pmin)) * floor(pmax/max(w,pmin)).

    hsharma35/bitfusion ``bitfusion/src/simulator/accelerator.py`` (``get_perf_factor``). Operands
    wider than ``pmax`` fuse temporally: factor ``pmax / next_pow2(b)`` (16 bits take 2 passes per
    operand, so 16x16 runs at 1/4 of 8x8, as in the BitFusion paper's 16-bit mode).
    """

    def one(b: int) -> float:
        if b <= pmax:
            return float(pmax // max(b, pmin))
        return pmax / 2 ** math.ceil(math.log2(b))

    return one(a) * one(w)


@dataclass(repr=False)
class BitFusionModel(AnalyticModel):
    """Bit-flexible spatial array of Fusion Units (BitFusion, Sharma et al., ISCA 2018).

    Compute cycles, from the BitFusion simulator (hsharma35/bitfusion
    ``bitfusion/src/simulator/accelerator.py``)::

        pf     = bitfusion_perf_factor(w, a)      # 1 at 8x8 ... 16 at 2x2
        direct = B * ceil(OC/cols) * OH*OW * KH*KW * ceil(IC/(rows*pf))     (per group)
        im2col = B*OH*OW * ceil(OC/cols) * ceil(KH*KW*IC/(rows*pf))         when IC < rows*pf

    (the simulator uses im2col for thin first layers; we use it whenever the input channels do not
    fill the rows). Bits snap up to powers of two >= pmin since floor(8/3) = floor(8/4).
    """

    rows: int = 16  # N in the simulator
    cols: int = 32  # M in the simulator
    pmax: int = 8
    pmin: int = 2
    kind: str = "bit_flexible"

    def snap(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        def up(b: int) -> int:
            b = self._int_bits(b)
            return 2 ** math.ceil(math.log2(max(b, self.pmin)))

        return up(w_bits), up(a_bits)

    def cycles(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> int:
        pf = bitfusion_perf_factor(w, a, self.pmax, self.pmin)
        lanes = self.rows * pf
        kh, kw = layer.kernel_size if layer.op == "conv2d" else (1, 1)
        ic = max(1, g.k // (kh * kw))
        col_tiles = math.ceil(g.n / self.cols)
        if ic < lanes:
            per_group = g.m * col_tiles * math.ceil(g.k / lanes)
        else:
            per_group = g.m * col_tiles * kh * kw * math.ceil(ic / lanes)
        return g.groups * per_group

    def compute(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> tuple[float, float | None]:
        c = self.cycles(g, layer, w, a)
        return self.cycles_to_s(c), float(c)

    def channel_quantum(self, layer: LayerInfo) -> int:
        """Output channels map to the array's columns."""
        return self.cols

    def units(self) -> int:
        return self.rows * self.cols


@dataclass(repr=False)
class FixedNPUModel(AnalyticModel):
    """Fixed-precision integer NPU (Ethos-U, Edge TPU): bits snap UP to a supported pair.

    ``t_c = MACs * slowdown(pair) / (macs_per_cycle * f * U)``; lower bits than the pair's save
    storage (size budget) but neither time nor traffic (int8 containers). Pairs not covering the
    request (floats) run on the widest pair times ``float_slowdown`` (the NPU cannot run float).
    Ethos-U55/65: pairs (8, 8) and (8, 16) with a16 at half rate (nxp-imx/ethos-u-vela).
    """

    macs_per_cycle: int = 256
    pairs: tuple[tuple[int, int, float], ...] = ((8, 8, 1.0),)
    float_slowdown: float = 1.0
    array: tuple[int, int, int] | None = None
    kind: str = "fixed_npu"

    def _pair(self, w_bits: int, a_bits: int) -> tuple[int, int, float]:
        ok = [p for p in self.pairs if p[0] >= w_bits and p[1] >= a_bits]
        if ok:
            return min(ok, key=lambda p: (p[2], p[0] * p[1]))
        widest = max(self.pairs, key=lambda p: (p[2], p[0] * p[1]))
        return widest[0], widest[1], widest[2] * self.float_slowdown

    def snap(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        p = self._pair(w_bits, a_bits)
        return p[0], p[1]

    def rate_factor(self, w_bits: int, a_bits: int) -> float:
        return self._pair(w_bits, a_bits)[2]

    def compute(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> tuple[float, float | None]:
        u = self.utilisation(g, *self.array) if self.array else 1.0
        cycles = g.macs / (self.macs_per_cycle * u)
        return self.cycles_to_s(cycles), cycles

    def units(self) -> int:
        return self.macs_per_cycle


# Precisions a GPU may execute, narrowest first: (name, max w bits, max a bits).
GPU_PRECISIONS = (
    ("int1", 1, 1),
    ("int4", 4, 4),
    ("int8", 8, 8),
    ("fp16", 16, 16),
    ("fp32", 32, 32),
)


@dataclass(repr=False)
class GPUTensorCoreModel(AnalyticModel):
    """GPU with tensor-core int8/int4 pairs: ``t_c = 2*MACs*pad / (peak_ops(prec) * eta)``,
    ``pad = ceil(N / channel_tile) * channel_tile / N`` for N output channels.

    The executed precision is the narrowest one with ``w <= max_w`` and ``a <= max_a`` among the
    peaks the profile lists: both operands must be low-bit, so W4A8 runs as int8 x int8 and W8A16
    as fp16 (NVIDIA PTX ISA: the integer ``mma`` shapes take both operands at one width). ``eta``
    (``efficiency``) is calibrated: 0.09 reproduces the T4 kernel times in HAWQ-V3's AutoTVM logs
    (Zhen-Dong/HAWQ ``tvm_benchmark/mixed_precision_models/tuning_logs``) with median |err| 10 %.
    Energy defaults to board power x time (``static_w``): a crude estimate, not a measurement.
    """

    peak_ops_per_s: dict[str, float] = field(default_factory=dict)
    channel_tile: int = 1  # output channels per tensor-core MMA tile (its N dimension)
    kind: str = "gpu_tensor_core"

    def channel_quantum(self, layer: LayerInfo) -> int:
        """A GEMM's output channels run in MMA tiles of ``channel_tile``: a sub-kernel of 3
        channels computes a whole tile."""
        return self.channel_tile

    def precision(self, w_bits: int, a_bits: int) -> tuple[str, int, int]:
        for name, mw, ma in GPU_PRECISIONS:
            if name in self.peak_ops_per_s and w_bits <= mw and a_bits <= ma:
                return name, mw, ma
        raise ValueError(f"{self.name}: no precision executes w{w_bits}a{a_bits}")

    def snap(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        _, mw, ma = self.precision(w_bits, a_bits)
        return mw, ma

    def compute(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> tuple[float, float | None]:
        name, _, _ = self.precision(w, a)
        padded = math.ceil(g.n / self.channel_tile) * self.channel_tile / g.n  # N = out channels
        return 2.0 * g.macs * padded / self.peak_ops_per_s[name], None


@dataclass(repr=False)
class CPUModel(AnalyticModel):
    """Generic SIMD CPU: fp32 FMA rate, int8 at ``int8_speedup`` times it, nothing below int8.

    ``fp32 MAC/s = cores * f * fma_per_cycle * simd_bits/32``; int8 dot products (AVX-512 VNNI
    ``vpdpbusd``, Arm SDOT) give 4x per instruction, the pre-VNNI 3-instruction sequence ~1.33x
    (Intel Intrinsics Guide). Sub-8-bit operands run as int8 plus
    unpacking: only their storage shrinks. fp16 runs at the fp32 rate.
    """

    cores: int = 1
    simd_bits: int = 256
    fma_per_cycle: int = 2
    int8_speedup: float = 1.33
    kind: str = "cpu"

    def snap(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        return (8, 8) if max(w_bits, a_bits) <= 8 else (32, 32)

    def fp32_macs_per_s(self) -> float:
        if not self.clock_hz:
            raise ValueError(f"{self.name}: a cpu profile needs clock_hz")
        return self.cores * self.clock_hz * self.fma_per_cycle * self.simd_bits / 32

    def compute(self, g: Gemm, layer: LayerInfo, w: int, a: int) -> tuple[float, float | None]:
        rate = self.fp32_macs_per_s() * (self.int8_speedup if w <= 8 else 1.0)
        return g.macs / rate, None
