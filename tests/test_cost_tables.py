"""Custom cost tables (issue 8, item 6): falling (non-monotone) measured rows, the diagnostics of
``cost check --model``, the marks of ``cost show``, per-channel mixed layers, measured vs
not-measured energy, and latency/energy in ``report.md`` and the console summary."""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings
from pathlib import Path

import pytest
import torch

from cost_models import Cost, load_accelerator, load_cost_table
from cost_models.registry import PROFILE_DIR
from cost_models.table import is_unquantized_gap, shape_key, write_cost_table
from cost_models.table_check import check_table
from hawq_search.cli.errors import run_cli
from hawq_search.cli.main import cli
from hawq_search.core.exceptions import CostModelError, InputWarning
from hawq_search.core.layers import LayerInfo
from hawq_search.graph.trace import trace_model
from hawq_search.models.registry import get_model_spec
from hawq_search.plan import LayerPlan, Plan
from hawq_search.report import console_table, write_report

HEADER = (
    "op,in_channels,out_channels,in_h,in_w,out_h,out_w,kernel_h,kernel_w,stride,groups,batch,"
    "w_bits,a_bits,latency_s,energy_j"
)
MID = "conv2d,64,64,8,8,8,8,3,3,1,1,{batch},{w},{a},{lat},{en}"
ROOT = Path(__file__).resolve().parents[1]


def conv(name: str, cin: int, cout: int, h: int, k: int = 3, s: int = 1, d: int = 1) -> LayerInfo:
    ho = (h + 2 * (k // 2) - k) // s + 1
    params = cout * cin * k * k
    return LayerInfo(
        name, "conv2d", cin, cout, (k, k), (s, s), (k // 2, k // 2), 1, (cin, h, h),
        (cout, ho, ho), (cout, cin, k, k), False, params, params * ho * ho, name, dilation=(d, d),
    )  # fmt: skip


MID_LAYER = conv("mid", 64, 64, 8)


def _table(tmp_path: Path, rows: list[str], name: str = "costs.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join([HEADER, *rows]) + "\n")
    return p


def _profile(tmp_path: Path, base: str, table: str = "costs.csv", extra: str = "") -> Path:
    text = (PROFILE_DIR / f"{base}.yaml").read_text() + f"\ncost_table: {table}\n{extra}"
    p = tmp_path / f"{base}_measured.yaml"
    p.write_text(text)
    return p


def _load(path: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_accelerator(path)
    return model, [w.message for w in caught]


def invoke(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            code = run_cli(cli, [str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _assert_monotone(model, layer, bits=(1, 2, 3, 4, 5, 6, 8, 16, 32)):
    for w1, w2 in itertools.combinations(bits, 2):
        for a1, a2 in itertools.product(bits, repeat=2):
            if a1 > a2:
                continue
            lo, hi = model.layer_cost(layer, w1, a1), model.layer_cost(layer, w2, a2)
            assert lo.latency_s <= hi.latency_s * (1 + 1e-12), (w1, a1, w2, a2)
            assert lo.energy_j <= hi.energy_j * (1 + 1e-12), (w1, a1, w2, a2)


# -- tables whose costs fall with more bits -------------------------------------------------------


def test_falling_table_accepted_with_one_warning_and_priced_by_cheapest_cover(tmp_path):
    rows = [
        MID.format(batch=8, w=4, a=4, lat=3e-4, en=""),  # int4 slower than int8 (line 2)
        MID.format(batch=8, w=8, a=8, lat=2e-4, en=""),
        MID.format(batch=8, w=4, a=8, lat=2.5e-4, en=""),
        MID.format(batch=8, w=16, a=16, lat=9e-4, en=""),
    ]
    _table(tmp_path, rows)
    m, caught = _load(_profile(tmp_path, "nvidia_t4"))
    assert len(caught) == 1 and isinstance(caught[0], InputWarning)
    msg = str(caught[0])
    assert msg.startswith(f"{tmp_path / 'costs.csv'}:3: column 'latency_s': 0.0002 at w_bits=8")
    assert "below 0.0003 at w_bits=4, a_bits=4 on line 2" in msg and "2 more such pairs" in msg
    c44 = m.layer_cost(MID_LAYER, 4, 4)
    assert c44.latency_s == 2e-4 and c44.bound == "measured" and not c44.extrapolated
    assert m.price_source(MID_LAYER, 4, 4) == "rounded-up"
    assert m.price_source(MID_LAYER, 8, 8) == "measured"
    assert m.layer_cost(MID_LAYER, 2, 3).latency_s == 2e-4  # cheapest pair covering w2 a3
    assert m.layer_cost(MID_LAYER, 16, 8).latency_s == 9e-4
    _assert_monotone(m, MID_LAYER)


def test_falling_energies_and_bilinear_tables_use_the_cheaper_cover(tmp_path):
    corners = {(2, 2): (1.0, 5.0), (2, 8): (4.0, 4.0), (8, 2): (4.0, 4.0), (8, 8): (16.0, 16.0)}
    rows = [MID.format(batch=16, w=w, a=a, lat=v, en=e) for (w, a), (v, e) in corners.items()]
    _table(tmp_path, rows)
    m, caught = _load(_profile(tmp_path, "bitserial_bismo_haq_cloud"))
    assert len(caught) == 1 and "column 'energy_j'" in str(caught[0])
    assert m.interpolation == "bilinear"
    low = m.layer_cost(MID_LAYER, 2, 2)
    assert low.latency_s == 1.0 and low.energy_j == 4.0  # energy of the cheaper covering pair
    assert m.price_source(MID_LAYER, 4, 4) == "interpolated"
    assert m.price_source(MID_LAYER, 1, 1) == "extrapolated"
    _assert_monotone(m, MID_LAYER, bits=(1, 2, 3, 4, 6, 8, 16))


def test_fallback_above_irregular_rows_never_falls(tmp_path):
    rows = [
        MID.format(batch=1, w=2, a=2, lat=1e-4, en=""),
        MID.format(batch=1, w=4, a=16, lat=5e-3, en=""),
    ]
    _table(tmp_path, rows)
    m, _ = _load(_profile(tmp_path, "generic_cpu"))
    # (8, 4) is covered by no row; (3, 3) <= (8, 4) is priced from the (4, 16) row
    assert m.layer_cost(MID_LAYER, 8, 4).latency_s >= m.layer_cost(MID_LAYER, 3, 3).latency_s
    _assert_monotone(m, MID_LAYER)


# -- shapes the table cannot hold ----------------------------------------------------------------


@pytest.mark.parametrize(
    "row,col,problem",
    [
        ("conv2d,16,16,32,32,31,32,3,3,1,1,1,8,8,1e-4,", "out_h", "31 cannot come from in_h 32"),
        ("conv2d,16,16,32,32,16,30,5,5,2,1,1,8,8,1e-4,", "out_w", "out = floor((in + 2p - k)/s) + 1"),
        ("conv2d,16,16,8,8,9,8,1,1,1,1,1,8,8,1e-4,", "out_h", "gives 8;"),
    ],
)  # fmt: skip
def test_impossible_shapes_are_rejected(tmp_path, row, col, problem):
    p = _table(tmp_path, [row])
    with pytest.raises(CostModelError) as e:
        load_cost_table(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:2: column '{col}': ") and problem in msg and "\n" not in msg


def test_possible_shapes_load(tmp_path):
    rows = [
        "conv2d,16,32,32,32,16,16,3,3,2,1,1,8,8,1e-4,",  # stride 2, padding 1
        "conv2d,3,64,224,224,112,112,7,7,2,1,1,8,8,1e-4,",  # ResNet stem, padding 3
        "conv2d,16,16,34,34,32,32,3,3,1,1,1,8,8,1e-4,",  # padding 0 (valid, or a padded input)
    ]
    assert len(load_cost_table(_table(tmp_path, rows))) == 3


def test_dilated_layers_never_match_undilated_rows(tmp_path):
    _table(tmp_path, [MID.format(batch=1, w=8, a=8, lat=1e-3, en="")])
    m, _ = _load(_profile(tmp_path, "generic_cpu"))
    assert shape_key(conv("dil", 64, 64, 8, d=2), 1) is None
    assert m.layer_cost(conv("dil", 64, 64, 8, d=2), 8, 8).extrapolated
    assert not m.layer_cost(MID_LAYER, 8, 8).extrapolated


# -- cost check --model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet20_layers():
    spec = get_model_spec("resnet20")
    net = spec.builder(num_classes=spec.num_classes).eval()
    return trace_model(net, torch.zeros(1, *spec.preprocess.input_size)).layers


def _rows_for(layers, batch: int, lat=1e-5, bits=((8, 8), (4, 4))) -> list[dict]:
    """One row per distinct layer shape and bit pair; ``lat`` is seconds at 4 bits (twice that
    at 8) or a function (layer, w, a) -> seconds."""
    out, seen = [], set()
    for layer in layers:
        key = shape_key(layer, batch)
        if key in seen:
            continue
        seen.add(key)
        base = {f: getattr(key, f) for f in key.__dataclass_fields__}
        for w, a in bits:
            t = lat(layer, w, a) if callable(lat) else lat * (1 + (w == 8))
            out.append({**base, "w_bits": w, "a_bits": a, "latency_s": f"{t:.6g}"})
    return out


def _padded(row: dict, pad: int = 1) -> dict:
    return {**row, "in_h": row["in_h"] + 2 * pad, "in_w": row["in_w"] + 2 * pad}


def test_cost_check_model_counts_matches_and_fallbacks(tmp_path, resnet20_layers):
    layers = resnet20_layers
    rows = _rows_for(layers[:1], 1)  # conv1: 2 rows that match
    rows += [_padded(r) for r in _rows_for([layers[1]], 1)]  # layer1.0.conv1 written padded
    rows += [{**r, "in_channels": 5} for r in _rows_for(layers[:1], 1, bits=((8, 8),))]
    csv = write_cost_table(tmp_path / "t.csv", rows)
    code, out, err = invoke(["cost", "check", csv, "--model", "resnet20"])
    assert code == 0, err
    assert f"{csv}: valid cost table, 5 rows" in out
    assert "resnet20 at batch 1: 2 of 5 rows match its layers; 1 of 20 layers measured, 19 fall back" in out  # fmt: skip
    assert "no layer matches lines 4, 5 (conv2d 16->16 34x34->32x32" in out
    assert "looks like layer1.0.conv1's 32x32 plus its padding 1x1" in out
    assert "no layer matches line 6 (conv2d 5->16" in out
    fallback = next(line for line in out.splitlines() if line.startswith("analytic fallback: "))
    names = fallback.split(": ", 1)[1].split(", ")
    assert len(names) == 19 and "conv1" not in names
    assert names[0] == "layer1.0.conv1" and names[-1] == "linear"
    warns = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warns) == 1 and "unpadded input size" in warns[0] and "PROFILE_FORMAT.md" in warns[0]


def test_cost_check_warns_about_milliseconds(tmp_path, resnet20_layers):
    rows = _rows_for(resnet20_layers[:2], 8, lat=0.8)  # 1.6 s at 8 bits: milliseconds
    csv = write_cost_table(tmp_path / "ms.csv", rows)
    code, out, err = invoke(["cost", "check", csv])
    assert code == 0, err
    assert "more than 1 s for one layer (up to 1.6 s)" in err and "milliseconds" in err
    # under 1 s per layer, but 1000x the profile's analytic model: still caught with a profile
    t4 = load_accelerator("nvidia_t4")
    rows = _rows_for(resnet20_layers, 8, lambda lay, w, a: t4.layer_cost(lay, w, a).latency_s * 1e3, ((8, 8),))  # fmt: skip
    write_cost_table(tmp_path / "ms2.csv", rows)
    yaml = _profile(tmp_path, "nvidia_t4", "ms2.csv")
    code, out, err = invoke(["cost", "check", yaml, "--model", "resnet20"])
    assert code == 0, err
    assert "1000x the profile's analytic model" in err and "milliseconds" in err
    assert "20 of 20 layers measured, 0 fall back" in out


def test_cost_check_warns_about_a_batch_the_profile_does_not_run(tmp_path, resnet20_layers):
    write_cost_table(tmp_path / "b1.csv", _rows_for(resnet20_layers, 1))
    yaml = _profile(tmp_path, "nvidia_t4", "b1.csv")  # the T4 profile runs batch 8
    code, out, err = invoke(["cost", "check", yaml, "--model", "resnet20"])
    assert code == 0, err
    assert "resnet20 at batch 8: 0 of" in out and "0 of 20 layers measured" in out
    assert "but at batch 1, not 8" in out
    warns = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warns) == 1 and "column 'batch'" in warns[0] and "--accel-batch" in warns[0]
    code, out, err = invoke(["cost", "check", yaml, "--model", "resnet20", "--accel-batch", 1])
    assert code == 0 and "warning" not in err and "20 of 20 layers measured" in out


def test_cost_check_library_api(tmp_path, resnet20_layers):
    table = load_cost_table(write_cost_table(tmp_path / "t.csv", _rows_for(resnet20_layers, 1)))
    res = check_table(table, resnet20_layers, batch=1)
    assert res.matched_rows == res.rows == len(table) and not res.unmatched
    assert res.fallback_layers == [] and len(res.measured_layers) == 20 and not res.warnings


def test_cost_check_impossible_shape_is_one_line_exit_2(tmp_path):
    p = _table(tmp_path, ["conv2d,16,16,32,32,31,31,3,3,1,1,1,8,8,1e-4,"])
    code, out, err = invoke(["cost", "check", p])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {p}:2: column 'out_h': 31 cannot")


# -- cost show ----------------------------------------------------------------------------------


def _show_rows(out: str) -> dict[str, str]:
    return {
        line.split()[0]: line
        for line in out.splitlines()
        if line.startswith(("conv", "layer", "linear"))
    }


def test_cost_show_marks_cells_and_spares_unquantized_columns(tmp_path, resnet20_layers):
    # conv1 measured at 8/8 and 4/4 (w2 rounds up to 4/4); nothing at 16/32 bits
    write_cost_table(tmp_path / "c.csv", _rows_for(resnet20_layers[:1], 8))
    yaml = _profile(tmp_path, "nvidia_t4", "c.csv")
    code, out, err = invoke(["cost", "show", "--accelerator", yaml, "--model", "resnet20"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith(f"cost table {tmp_path / 'c.csv'}: 1 of 20 layers measured")
    rows = _show_rows(out)
    cells = rows["conv1"].split()
    # at a_bits=8 only the 8/8 row covers w2 and w4: rounded up; w8 measured (unmarked)
    assert cells[1].endswith("^") and cells[2].endswith("^") and cells[3][-1].isdigit()
    assert cells[4].endswith("-")
    assert not rows["conv1"].rstrip().endswith("yes")  # the w32 gap does not flag the layer
    other = rows["layer1.0.conv1"].split()
    assert all(c.endswith("*") for c in other[1:4]) and other[4].endswith("-")
    assert rows["layer1.0.conv1"].rstrip().endswith("yes")
    assert any(line.startswith("marks: ") for line in lines)
    energy = next(line for line in lines if line.startswith("total energy (mJ)"))
    assert energy.endswith("not measured: static power x time")
    assert lines[-1].endswith("layers at w8")


def test_cost_show_interpolated_and_measured_energy(tmp_path):
    rows = [MID.format(batch=16, w=w, a=8, lat=1e-4 * w, en=1e-5 * w) for w in (2, 8)]
    rows += [MID.format(batch=16, w=w, a=8, lat=1e-4 * w, en=1e-5 * w) for w in (16, 32)]
    _table(tmp_path, rows)
    m, _ = _load(_profile(tmp_path, "bitserial_bismo_haq_cloud"))
    assert m.price_source(MID_LAYER, 4, 8) == "interpolated"
    c = m.layer_cost(MID_LAYER, 4, 8)
    assert c.energy_measured and c.measured_energy_j == c.energy_j == pytest.approx(4e-5)
    assert not is_unquantized_gap(m, 32, 8)  # the table has 32-bit rows: no gap


@pytest.mark.parametrize("flag,value", [("--wbits", "1,99"), ("--wbits", "0,4"), ("--abits", "64")])
def test_cost_show_bad_bits_exit_2_one_line(flag, value):
    code, out, err = invoke(["cost", "show", "--accelerator", "nvidia_t4", flag, value])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]
    assert "out of range (1..32" in lines[0]


# -- mixed layers and energy flags --------------------------------------------------------------


def test_mixed_channel_layer_is_extrapolated_not_measured(tmp_path):
    rows = [MID.format(batch=8, w=w, a=8, lat=1e-4 * w, en="") for w in (4, 8)]
    _table(tmp_path, rows)
    m, _ = _load(_profile(tmp_path, "nvidia_t4"))
    whole = m.plan_cost(MID_LAYER, [8] * 64, 8)
    assert whole.bound == "measured" and not whole.extrapolated
    mixed = m.plan_cost(MID_LAYER, [4] * 32 + [8] * 32, 8)
    assert m.kernel_groups(MID_LAYER, [4] * 32 + [8] * 32, 8) == 2
    assert mixed.extrapolated and mixed.bound in ("compute", "memory")
    part = m.layer_cost(MID_LAYER, 8, 8, out_channels=16)
    assert part.extrapolated and part.bound != "measured" and not part.energy_measured
    assert m.price_source(MID_LAYER, 8, 8, out_channels=16) == "extrapolated"


def test_energy_measured_only_from_energy_column(tmp_path):
    a = Cost(1.0, 2.0, 0, 0, 0, "measured", measured_energy_j=2.0)
    b = Cost(1.0, 3.0, 0, 0, 0, "compute")
    assert a.energy_measured and not b.energy_measured and not Cost.zero().energy_measured
    s = a + b
    assert s.measured_energy_j == 2.0 and not s.energy_measured
    assert sum([a, a.scaled(0.5)], Cost.zero()).energy_measured
    _table(tmp_path, [MID.format(batch=8, w=8, a=8, lat=1e-3, en=2e-2)], name="e.csv")
    _table(tmp_path, [MID.format(batch=8, w=8, a=8, lat=1e-3, en="")], name="n.csv")
    with_e, _ = _load(_profile(tmp_path, "nvidia_t4", "e.csv"))
    c = with_e.layer_cost(MID_LAYER, 8, 8)
    assert c.energy_measured and c.energy_j == 2e-2
    assert with_e.per_channel_cost(MID_LAYER, 8, 8).measured_energy_j > 0
    assert not with_e.layer_cost(conv("other", 32, 32, 8), 8, 8).energy_measured
    without, _ = _load(_profile(tmp_path, "nvidia_t4", "n.csv"))
    c = without.layer_cost(MID_LAYER, 8, 8)
    assert not c.energy_measured and c.energy_j == pytest.approx(70.0 * 1e-3)  # 70 W x 1 ms
    assert without.energy_note() == "static power x time"
    assert not load_accelerator("nvidia_t4").layer_cost(MID_LAYER, 8, 8).energy_measured
    assert load_accelerator("bitfusion_45nm").energy_note() == "analytic estimate"


# -- report.md and the console summary ----------------------------------------------------------


def _summary() -> dict:
    return {
        "model": "tiny", "eval_images": 10, "eval_source": "synthetic", "calib_images": 10,
        "calib_source": "synthetic", "seed": 0, "fp_bytes": 4e4, "uniform_bytes": 1e4,
        "uniform_bops": 1e9, "plan_bytes": 9e3, "plan_bops": 8e8, "avg_weight_bits": 5.5,
        "act_bits_summary": "8", "budget_bytes": 9.5e3, "budget_bops": None,
        "uniform_bits": {"w": 4, "a": 8}, "top1": {"fp": 90.0, "uniform": 85.0, "plan": 88.0},
        "solver": {"name": "ilp", "status": "optimal", "mip_gap": 0.0, "solve_time_s": 0.1},
        "sensitivity": "fisher", "timings_s": {"sensitivity": 1.0, "search": 0.1, "evaluation": 1.0},
    }  # fmt: skip


def _plan(model, layers, bits) -> Plan:
    lps = [
        LayerPlan(lay.name, "conv2d", lay.weight_shape, b, 8, f"g{i}", 1.0, False, info=lay)
        for i, (lay, b) in enumerate(zip(layers, bits, strict=True))
    ]
    plan = Plan({"id": "tiny"}, lps, budgets={"latency_s": 5e-3, "energy_j": None,
                                              "accelerator": "t4.yaml"})  # fmt: skip
    plan.recompute_totals()
    plan.price(model)
    return plan


def test_report_and_console_show_latency_energy_budgets_and_extrapolation(tmp_path):
    _table(tmp_path, [MID.format(batch=8, w=8, a=8, lat=1e-3, en="")])
    m, _ = _load(_profile(tmp_path, "nvidia_t4"))
    other = conv("other", 32, 32, 8)
    plan = _plan(m, [MID_LAYER, other], [[8] * 64, [8] * 32])
    console = console_table(_summary(), plan=plan)
    assert console.startswith(console_table(_summary()))  # without a plan: unchanged
    assert f"{m.name} (batch 8): latency" in console and "budget 5.0000 ms" in console
    assert "(not measured: static power x time)" in console  # the profile's energy_note
    assert "extrapolated (outside the measured cost table): 1 layer: other" in console
    write_report(tmp_path / "report.md", _summary(), plan)
    text = (tmp_path / "report.md").read_text()
    assert f"## Hardware: {m.name} (batch 8)" in text
    assert "latency 5.0000 ms, energy none per batch on t4.yaml" in text
    head = next(line for line in text.splitlines() if line.startswith("| layer |"))
    assert head.endswith("| latency (ms) | energy (mJ, not measured) | bound | extrapolated |")
    mid = next(line for line in text.splitlines() if line.startswith("| mid |"))
    assert mid.endswith("| 1.0000 | 70.0000 | measured | no |")
    assert next(line for line in text.splitlines() if line.startswith("| other |")).endswith("| yes |")  # fmt: skip


def test_report_marks_only_unmeasured_energy_when_some_is_measured(tmp_path):
    _table(tmp_path, [MID.format(batch=8, w=8, a=8, lat=1e-3, en=2e-2)])
    m, _ = _load(_profile(tmp_path, "nvidia_t4"))
    plan = _plan(m, [MID_LAYER, conv("other", 32, 32, 8)], [[8] * 64, [8] * 32])
    for lp in plan.layers:  # what Plan.price records once it stores Cost.energy_measured
        lp.hardware["energy_measured"] = m.plan_cost(lp.info, lp.w_bits, lp.a_bits).energy_measured
    write_report(tmp_path / "report.md", _summary(), plan)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert next(x for x in lines if x.startswith("| layer |")).count("energy (mJ) |") == 1
    assert "| 20.0000 |" in next(x for x in lines if x.startswith("| mid |"))
    assert "(not measured) |" in next(x for x in lines if x.startswith("| other |"))
    plan.totals["energy_measured"] = True
    assert "mJ per batch (measured)" in console_table(_summary(), plan=plan)


def test_no_references_to_a_missing_cost_models_md():
    files = [ROOT / "cost_models" / n for n in ("table.py", "table_format.py", "analytic.py")]
    files += sorted((ROOT / "cost_models" / "profiles").glob("*.yaml"))
    for f in files:
        assert "cost-models.md" not in f.read_text(), f
