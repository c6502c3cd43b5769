"""Tests of the hardware cost models: hand-computed formulas, profile and table parsing,
validation messages, interpolation/extrapolation and monotonicity in bits."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest

from cost_models import (
    Cost,
    TableCostModel,
    bitfusion_perf_factor,
    list_accelerators,
    load_accelerator,
    load_cost_table,
)
from cost_models.registry import PROFILE_DIR
from cost_models.size import channel_bits_cost, layer_weight_bytes
from hawq_search.core.exceptions import CostModelError
from hawq_search.core.layers import LayerInfo
from hawq_search.cpu_profile import profile_local_cpu

BITS = (1, 2, 3, 4, 5, 6, 8, 16, 32)
HEADER = (
    "op,in_channels,out_channels,in_h,in_w,out_h,out_w,kernel_h,kernel_w,stride,groups,batch,"
    "w_bits,a_bits,latency_s,energy_j"
)


def conv(name: str, cin: int, cout: int, h: int, k: int = 3, s: int = 1, g: int = 1) -> LayerInfo:
    ho = (h + 2 * (k // 2) - k) // s + 1
    params = cout * (cin // g) * k * k
    return LayerInfo(
        name, "conv2d", cin, cout, (k, k), (s, s), (k // 2, k // 2), g, (cin, h, h),
        (cout, ho, ho), (cout, cin // g, k, k), False, params, params * ho * ho, name,
    )  # fmt: skip


def linear(name: str, cin: int, cout: int) -> LayerInfo:
    return LayerInfo(
        name, "linear", cin, cout, (1, 1), (1, 1), (0, 0), 1, (cin,), (cout,), (cout, cin),
        True, cin * cout, cin * cout, name,
    )  # fmt: skip


LAYERS = [
    conv("first", 3, 16, 32),
    conv("mid", 64, 64, 8),
    conv("down", 32, 64, 16, s=2),
    conv("dw", 32, 32, 56, g=32),
    conv("pw", 16, 96, 28, k=1),
    linear("fc", 64, 10),
]


def cycles(model, cost: Cost) -> float:
    return cost.latency_s * model.clock_hz


# -- Cost ---------------------------------------------------------------------------------------


def test_cost_addition_sums_fields_and_keeps_dominant_bound():
    a = Cost(2.0, 1.0, 10.0, 100.0, 5.0, "compute")
    b = Cost(3.0, 2.0, 20.0, 50.0, 5.0, "memory", extrapolated=True)
    c = a + b
    assert (c.latency_s, c.energy_j, c.weight_bytes, c.bops, c.act_bytes) == (5, 3, 30, 150, 10)
    assert c.bound == "memory" and c.extrapolated
    assert sum([a, b]) == c
    with pytest.raises(ValueError):
        Cost(1, 1, 1, 1, 1, "bogus")


# -- analytic formulas against hand-computed examples -------------------------------------------


def test_bit_serial_pointwise_cycles_match_haq_table_law():
    m = load_accelerator("bitserial_bismo_haq_cloud")
    pw = conv("pw", 16, 96, 112, k=1)  # HAQ MobileNetV2 layer 3, batch 16
    # ceil(16*112*112/16) * ceil(16/128) * ceil(96/16) * w * a = 12544 * 1 * 6 * 64
    assert cycles(m, m.layer_cost(pw, 8, 8)) == pytest.approx(4_816_896)
    assert cycles(m, m.layer_cost(pw, 4, 4)) == pytest.approx(4_816_896 / 4)
    assert cycles(m, m.layer_cost(pw, 3, 5)) == pytest.approx(75_264 * 15)  # any bits: no snapping
    assert m.layer_cost(pw, 8, 8).bound == "compute"


def test_bit_serial_depthwise_and_fc_laws():
    m = load_accelerator("bitserial_bismo_haq_cloud")
    dw = conv("dw", 32, 32, 112, g=32)
    for w, a in ((1, 3), (8, 3)):  # ceil(M/16) * C * a, independent of w
        assert cycles(m, m.layer_cost(dw, w, a)) == pytest.approx(401_408 * 3)
    fc = linear("fc", 1280, 1000)
    c = m.layer_cost(fc, 8, 1)  # weight stream 1.28e6 * 8 / 256 bits per cycle
    assert cycles(m, c) == pytest.approx(40_000) and c.bound == "memory"


def test_bitfusion_perf_factor_and_speedup():
    assert bitfusion_perf_factor(8, 8) == 1
    assert bitfusion_perf_factor(4, 4) == 4
    assert bitfusion_perf_factor(2, 2) == 16
    assert bitfusion_perf_factor(3, 3) == bitfusion_perf_factor(4, 4)  # floor(8/3) = 2
    assert bitfusion_perf_factor(6, 8) == 1
    assert bitfusion_perf_factor(2, 8) == 4
    assert bitfusion_perf_factor(16, 16) == 0.25
    m = load_accelerator("bitfusion_45nm")
    layer = conv("c", 256, 64, 8)
    # B*OH*OW * ceil(64/32) * 9 * ceil(256/(16*pf)) at batch 16
    assert cycles(m, m.layer_cost(layer, 8, 8)) == pytest.approx(1024 * 2 * 9 * 16)
    assert cycles(m, m.layer_cost(layer, 2, 2)) == pytest.approx(1024 * 2 * 9 * 1)
    assert m.layer_cost(layer, 3, 3).latency_s == m.layer_cost(layer, 4, 4).latency_s
    assert m.layer_cost(layer, 5, 8).latency_s == m.layer_cost(layer, 8, 8).latency_s


def test_t4_int4_twice_int8_and_w4a8_runs_as_int8():
    m = load_accelerator("nvidia_t4")
    big = conv("big", 256, 256, 56)
    over = m.group_overhead(big).latency_s
    t8 = m.layer_cost(big, 8, 8).latency_s - over
    t4 = m.layer_cost(big, 4, 4).latency_s - over
    macs = big.macs * m.batch
    assert t8 == pytest.approx(2 * macs / (130e12 * 0.09))
    assert t8 / t4 == pytest.approx(2.0)
    assert m.layer_cost(big, 4, 8).latency_s == m.layer_cost(big, 8, 8).latency_s
    assert m.layer_cost(big, 2, 3).latency_s == m.layer_cost(big, 4, 4).latency_s
    assert m.layer_cost(big, 32, 32).latency_s > m.layer_cost(big, 16, 16).latency_s
    assert m.layer_cost(big, 8, 8).energy_j == pytest.approx(
        70.0 * m.layer_cost(big, 8, 8).latency_s
    )


def test_npu_snaps_up_lower_bits_save_size_not_time():
    m = load_accelerator("ethos_u55_256")
    layer = conv("c", 16, 16, 64)  # compute-bound on the NPU
    c8, c4 = m.layer_cost(layer, 8, 8), m.layer_cost(layer, 4, 4)
    assert c4.latency_s == c8.latency_s and c4.energy_j == c8.energy_j
    assert c4.weight_bytes < c8.weight_bytes
    assert c8.bound == "compute"
    assert c8.latency_s == pytest.approx(layer.macs / (256 * 500e6))
    # int16 activations run at half rate
    assert m.layer_cost(layer, 8, 16).latency_s == pytest.approx(2 * c8.latency_s)
    assert m.layer_cost(layer, 8, 12).latency_s == m.layer_cost(layer, 8, 16).latency_s
    assert m.layer_cost(layer, 32, 32).latency_s >= m.layer_cost(layer, 8, 16).latency_s


def test_generic_cpu_stepwise_int8():
    m = load_accelerator("generic_cpu")
    layer = conv("c", 64, 64, 32)
    assert m.layer_cost(layer, 2, 2).latency_s == m.layer_cost(layer, 8, 8).latency_s
    t8 = m.layer_cost(layer, 8, 8).latency_s - m.overhead_s
    fp32_rate = 4 * 3e9 * 2 * 256 / 32
    assert t8 == pytest.approx(layer.macs / (fp32_rate * 1.33))


def test_weight_bytes_bops_and_sub_kernels():
    m = load_accelerator("bitserial_bismo_haq_cloud")
    layer = LAYERS[1]
    full = m.layer_cost(layer, 4, 8)
    assert full.weight_bytes == layer_weight_bytes(layer, [4] * 64)
    assert full.bops == layer.macs * 4 * 8
    sub = m.layer_cost(layer, 4, 8, out_channels=16)
    assert sub.weight_bytes == pytest.approx(16 * channel_bits_cost(layer, 4))
    assert sub.latency_s < full.latency_s and sub.bops == full.bops / 4
    per = m.per_channel_cost(layer, 4, 8)
    over = m.group_overhead(layer)
    assert over.latency_s + 64 * per.latency_s == pytest.approx(full.latency_s)
    plan = m.plan_cost(layer, [4] * 32 + [8] * 32, 8)
    assert plan.weight_bytes == layer_weight_bytes(layer, [4] * 32 + [8] * 32)
    expect = m.layer_cost(layer, 4, 8, out_channels=32) + m.layer_cost(layer, 8, 8, out_channels=32)
    assert plan.latency_s == pytest.approx(expect.latency_s)
    with pytest.raises(ValueError):
        m.layer_cost(layer, 4, 8, out_channels=65)
    with pytest.raises(ValueError):
        m.layer_cost(layer, 0, 8)


def test_group_overhead_charged_once_per_sub_kernel():
    m = load_accelerator("nvidia_t4")
    layer = LAYERS[1]
    over = m.group_overhead(layer)
    assert over.latency_s == pytest.approx(5e-6) and over.weight_bytes == 0
    assert m.layer_cost(layer, 8, 8, out_channels=1).latency_s >= over.latency_s


def test_sub_kernels_follow_executed_precision():
    """Channels the hardware runs with one kernel share its overhead and tiles."""
    layer = LAYERS[1]
    mixed = [2] * 20 + [5] * 20 + [8] * 24
    npu = load_accelerator("ethos_u55_256")  # everything <= 8 bits runs as int8 x int8
    assert npu.kernel_groups(layer, mixed, 8) == 1
    assert npu.plan_cost(layer, mixed, 8).latency_s == pytest.approx(
        npu.layer_cost(layer, 8, 8).latency_s
    )
    assert npu.plan_cost(layer, mixed, 8).weight_bytes == layer_weight_bytes(layer, mixed)
    t4 = load_accelerator("nvidia_t4")  # int4 containers for W2/W4, int8 for W5/W8
    assert t4.kernel_groups(layer, [2] * 32 + [4] * 32, 8) == 1
    assert t4.kernel_groups(layer, mixed, 8) == 2
    two = t4.plan_cost(layer, mixed, 8)
    expect = t4.layer_cost(layer, 2, 8, out_channels=20) + t4.layer_cost(
        layer, 8, 8, out_channels=44
    )
    assert two.latency_s == pytest.approx(expect.latency_s)
    assert two.bops == pytest.approx(layer.macs_per_channel * sum(mixed) * 8)
    serial = load_accelerator("bitserial_bismo_haq_cloud")  # every width at its own speed
    assert serial.kernel_groups(layer, mixed, 8) == 3


def _assert_monotone(model, layer, out_channels=None):
    cost = {
        (w, a): model.layer_cost(layer, w, a, out_channels=out_channels)
        for w, a in itertools.product(BITS, BITS)
    }
    for (w, a), c in cost.items():
        for nxt in ((_next(w), a), (w, _next(a))):
            if None in nxt:
                continue
            d = cost[nxt]
            for f in ("latency_s", "energy_j", "weight_bytes", "bops", "act_bytes"):
                assert getattr(d, f) >= getattr(c, f) * (1 - 1e-12), (model.name, layer.name, f, (w, a), nxt)  # fmt: skip


def _next(b: int) -> int | None:
    i = BITS.index(b)
    return BITS[i + 1] if i + 1 < len(BITS) else None


@pytest.mark.parametrize("name", list_accelerators())
def test_builtin_costs_non_decreasing_in_bits(name):
    model = load_accelerator(name)
    for layer in LAYERS:
        _assert_monotone(model, layer)
    _assert_monotone(model, LAYERS[1], out_channels=24)


def test_every_number_in_builtin_profiles_has_a_source():
    number = re.compile(r":\s*[\[{]?\s*-?\d|^\s*-\s*\[\s*\d")
    for path in PROFILE_DIR.glob("*.yaml"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if number.search(code) and "schema_version" not in code:
                assert "# src:" in line, f"{path.name}:{i}: number without '# src:' comment"


def test_builtins_cover_required_kinds():
    kinds = {load_accelerator(n).kind for n in list_accelerators()}
    assert {"bit_serial", "bit_flexible", "gpu_tensor_core", "fixed_npu", "cpu"} <= kinds


# -- profile loading and validation -------------------------------------------------------------


def test_unknown_accelerator_lists_builtins():
    with pytest.raises(CostModelError, match="nvidia_t4"):
        load_accelerator("no_such_chip")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD_PROFILE = """schema_version: 1
kind: gpu_tensor_core
batch: 1
compute:
  peak_ops_per_s: {int8: 1.0e+12, fp32: 1.0e+11}
memory:
  - {name: dram, bandwidth_Bps: 1.0e+10}
"""


@pytest.mark.parametrize(
    "old,new,line,key",
    [
        ("batch: 1", "batchh: 1", 3, "batchh"),
        ("kind: gpu_tensor_core", "kind: tpu", 2, "kind"),
        ("bandwidth_Bps: 1.0e+10", "bandwidth_Bps: -5", 7, "memory.0.bandwidth_Bps"),
        ("int8: 1.0e+12", "int8: 1.0e+10", 5, "compute.peak_ops_per_s.fp32"),
    ],
)
def test_profile_errors_name_file_line_and_key(tmp_path, old, new, line, key):
    p = _write(tmp_path, "chip.yaml", GOOD_PROFILE.replace(old, new))
    with pytest.raises(CostModelError) as e:
        load_accelerator(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}:{line}: key '{key}':"), msg


def test_profile_missing_clock_for_cycle_law(tmp_path):
    text = "kind: bit_serial\ncompute:\n  array: {Dm: 2, Dk: 64, Dn: 2}\n"
    with pytest.raises(CostModelError, match="clock_hz.*required"):
        load_accelerator(_write(tmp_path, "bs.yaml", text))


# -- cost tables --------------------------------------------------------------------------------

MID = "conv2d,64,64,8,8,8,8,3,3,1,1,{batch},{w},{a},{lat},{en}"


def _table(tmp_path: Path, rows: list[str], name: str = "costs.csv") -> Path:
    return _write(tmp_path, name, "\n".join([HEADER, *rows]) + "\n")


def _profile_with_table(tmp_path: Path, base: str, table: str, extra: str = "") -> Path:
    text = (PROFILE_DIR / f"{base}.yaml").read_text() + f"\ncost_table: {table}\n{extra}"
    return _write(tmp_path, f"{base}_measured.yaml", text)


def test_table_parses_comments_and_linear_defaults(tmp_path):
    p = _write(
        tmp_path, "costs.csv",
        f"# measured on my board\n{HEADER}\n"
        + MID.format(batch=1, w=8, a=8, lat=1e-4, en="") + "\n"
        + "linear,64,10,,,,,,,,,1,8,8,2e-6,1e-6\n",
    )  # fmt: skip
    t = load_cost_table(p)
    assert len(t) == 2
    m = t.rows[next(k for k in t.rows if k.op == "linear")][(8, 8)]
    assert m.latency_s == 2e-6 and m.energy_j == 1e-6 and m.line == 4


@pytest.mark.parametrize(
    "rows,line,col,problem",
    [
        (["conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,-0.3,"], 2, "latency_s",
         "negative value -0.3 (costs must be >= 0)"),
        (["conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,nan,"], 2, "latency_s", "NaN value"),
        (["conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,1e-4,-1"], 2, "energy_j", "negative value -1"),
        (["conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,,"], 2, "latency_s", "missing value"),
        (["conv2d,64,,8,8,8,8,3,3,1,1,1,8,8,1e-4,"], 2, "out_channels", "missing value"),
        (["conv2d,64,64,8,8,8,8,3,3,1,1,1,8,40,1e-4,"], 2, "a_bits", "out of range"),
        (["conv3d,64,64,8,8,8,8,3,3,1,1,1,8,8,1e-4,"], 2, "op", "unknown op"),
        (["conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,1e-4,", "conv2d,64,64,8,8,8,8,3,3,1,1,1,4,4,2e-4,",
          "conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,1e-4,"], 4, "w_bits",
         "duplicate row: same shape, batch and bits as line 2"),
    ],
)  # fmt: skip
def test_table_errors_name_file_line_and_column(tmp_path, rows, line, col, problem):
    p = _table(tmp_path, rows)
    with pytest.raises(CostModelError) as e:
        load_cost_table(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}:{line}: column '{col}': "), msg
    assert problem in msg


def test_table_negative_message_exact(tmp_path):
    rows = [MID.format(batch=1, w=b, a=b, lat=1e-4 * b, en="") for b in (2, 3, 4, 5, 6)]
    rows.append("conv2d,64,64,8,8,8,8,3,3,1,1,1,8,8,-0.3,")
    p = _table(tmp_path, rows)
    with pytest.raises(CostModelError) as e:
        load_cost_table(p)
    assert str(e.value) == f"{p}:7: column 'latency_s': negative value -0.3 (costs must be >= 0)"


def test_table_header_errors(tmp_path):
    p = _write(tmp_path, "costs.csv", HEADER + ",colour\n")
    with pytest.raises(CostModelError, match=r"costs\.csv:1: column 'colour': unknown column"):
        load_cost_table(p)
    p = _write(tmp_path, "costs.csv", HEADER.replace(",latency_s", "") + "\n")
    with pytest.raises(CostModelError, match=r"costs\.csv:1: column 'latency_s': required column"):
        load_cost_table(p)


def test_bilinear_interpolation_and_clamp_extrapolation(tmp_path):
    corners = {(2, 2): 1.0, (2, 8): 4.0, (8, 2): 4.0, (8, 8): 16.0}
    rows = [MID.format(batch=16, w=w, a=a, lat=v, en=v / 10) for (w, a), v in corners.items()]
    _table(tmp_path, rows)
    m = load_accelerator(_profile_with_table(tmp_path, "bitserial_bismo_haq_cloud", "costs.csv"))
    assert isinstance(m, TableCostModel) and m.interpolation == "bilinear"
    layer = LAYERS[1]
    exact = m.layer_cost(layer, 8, 8)
    assert exact.latency_s == 16.0 and exact.bound == "measured" and not exact.extrapolated
    mid = m.layer_cost(layer, 4, 4)  # t = 1/3 in both axes
    expect = (4 / 9) * 1.0 + (2 / 9) * 4.0 + (2 / 9) * 4.0 + (1 / 9) * 16.0
    assert mid.latency_s == pytest.approx(expect) and not mid.extrapolated
    assert mid.energy_j == pytest.approx(expect / 10)
    low = m.layer_cost(layer, 1, 1)  # below the range: scaled by w*a
    assert low.latency_s == pytest.approx(1.0 / 4) and low.extrapolated
    high = m.layer_cost(layer, 16, 8)
    assert high.latency_s == pytest.approx(32.0) and high.extrapolated


def test_stepwise_rounds_up_to_next_measured_pair(tmp_path):
    rows = [
        MID.format(batch=1, w=4, a=8, lat=2e-4, en=""),
        MID.format(batch=1, w=8, a=8, lat=3e-4, en=""),
        MID.format(batch=1, w=32, a=32, lat=9e-4, en=""),
    ]
    _table(tmp_path, rows)
    m = load_accelerator(_profile_with_table(tmp_path, "ethos_u55_256", "costs.csv"))
    assert m.interpolation == "stepwise"
    layer = LAYERS[1]
    c = m.layer_cost(layer, 3, 5)
    assert c.latency_s == 2e-4 and c.bound == "measured" and not c.extrapolated
    assert m.layer_cost(layer, 6, 8).latency_s == 3e-4
    assert m.layer_cost(layer, 8, 16).latency_s == 9e-4
    # no energy column values: energy from the profile's energy model at the measured time
    assert m.layer_cost(layer, 8, 8).energy_j > 0


def test_unmeasured_shape_uses_calibrated_analytic(tmp_path):
    rows = [MID.format(batch=1, w=8, a=8, lat=1e-3, en="")]
    _table(tmp_path, rows)
    m = load_accelerator(_profile_with_table(tmp_path, "generic_cpu", "costs.csv"))
    analytic = m.analytic
    eff = 1e-3 / analytic.layer_cost(LAYERS[1], 8, 8).latency_s
    assert m.latency_efficiency == pytest.approx(eff)
    other = conv("other", 128, 128, 16)
    c = m.layer_cost(other, 8, 8)
    assert c.extrapolated and c.bound in ("compute", "memory")
    assert c.latency_s == pytest.approx(analytic.layer_cost(other, 8, 8).latency_s * eff)
    # same shape, bits above every measured pair: analytic fallback, never below the measurement
    top = m.layer_cost(LAYERS[1], 32, 32)
    assert top.extrapolated and top.latency_s >= 1e-3
    _assert_monotone(m, LAYERS[1])
    _assert_monotone(m, other)


def test_table_sub_kernel_scaled_from_measured_layer(tmp_path):
    rows = [MID.format(batch=1, w=8, a=8, lat=1e-3, en="")]
    _table(tmp_path, rows)
    m = load_accelerator(_profile_with_table(tmp_path, "generic_cpu", "costs.csv"))
    layer = LAYERS[1]
    half = m.layer_cost(layer, 8, 8, out_channels=32)
    assert half.extrapolated and 0 < half.latency_s < 1e-3
    assert m.plan_cost(layer, [8] * 64, 8).latency_s == pytest.approx(1e-3)


def test_profile_table_path_is_relative_to_yaml(tmp_path):
    sub = tmp_path / "boards"
    sub.mkdir()
    _table(sub, [MID.format(batch=8, w=8, a=8, lat=1e-3, en=2e-2)], name="t4.csv")
    m = load_accelerator(_profile_with_table(sub, "nvidia_t4", "t4.csv"))
    c = m.layer_cost(LAYERS[1], 8, 8)
    assert c.latency_s == 1e-3 and c.energy_j == 2e-2
    bad = _profile_with_table(tmp_path, "nvidia_t4", "missing.csv")
    with pytest.raises(CostModelError, match="key 'cost_table': file not found"):
        load_accelerator(bad)


# -- measuring the local CPU --------------------------------------------------------------------


def test_profile_local_cpu_writes_loadable_profile(tmp_path):
    layers = [conv("c1", 3, 8, 8), linear("fc", 32, 10)]
    path = profile_local_cpu(layers, tmp_path / "prof", repeats=3, warmup=1, threads=1)
    assert path.exists() and (path.parent / "local_cpu.costs.csv").exists()
    assert "# src:" in path.read_text()
    table = load_cost_table(path.parent / "local_cpu.costs.csv")
    assert len(table) == 6  # 2 shapes x (8/8, 16/16, 32/32)
    m = load_accelerator(path)
    assert isinstance(m, TableCostModel) and m.batch == 1
    for layer in layers:
        c8, c4 = m.layer_cost(layer, 8, 8), m.layer_cost(layer, 4, 4)
        c32 = m.layer_cost(layer, 32, 32)
        assert c8.bound == "measured" and not c8.extrapolated
        assert c4.latency_s == c8.latency_s <= c32.latency_s
        assert c8.latency_s > 0 and math.isfinite(c8.energy_j)
    assert m.layer_cost(conv("new", 8, 8, 8), 8, 8).extrapolated


def test_profile_measures_other_ops_of_its_model_only(tmp_path):
    import torch
    from torch import nn

    from cost_models.base import model_fingerprint
    from hawq_search.graph.trace import trace_model

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()  # fmt: skip
    layers = trace_model(net, torch.zeros(1, 3, 8, 8)).layers
    path = profile_local_cpu(
        layers, tmp_path / "prof", repeats=4, warmup=1, threads=1, model=net,
        input_shape=(3, 8, 8), model_name="tiny", rounds=2,
    )  # fmt: skip
    text = path.read_text()
    assert "other_ops:" in text and model_fingerprint(layers, 1) in text
    m = load_accelerator(path)
    other = m.fixed_cost(layers)
    assert other.latency_s > 0 and other.bound == "measured"
    assert m.fixed_cost([conv("other", 3, 8, 8)]).latency_s == 0  # another model: not applied
    for layer in layers:
        assert m.backend(layer, 8, 8) in ("fp32",) or m.backend(layer, 8, 8).startswith("int8-")
        assert m.backend(layer, 32, 32) == "fp32"
    assert m.backend(conv("unmeasured", 5, 7, 9), 8, 8) == ""


def test_other_ops_validation(tmp_path):
    base = (PROFILE_DIR / "generic_cpu.yaml").read_text()
    p = _write(tmp_path, "x.yaml", base + "other_ops:\n  - model: m\n    latency_s: 0.001\n")
    with pytest.raises(CostModelError, match=r"x\.yaml:\d+: key 'other_ops\[0\]\.fingerprint'"):
        load_accelerator(p)
    p = _write(tmp_path, "y.yaml", base + "other_ops:\n  - {fingerprint: abc, latency_s: -1}\n")
    with pytest.raises(CostModelError, match="must be >= 0"):
        load_accelerator(p)
