"""Load and validate an accelerator profile YAML into a :class:`CostModel`.

The schema is documented in ``cost_models/PROFILE_FORMAT.md``. Validation is strict (unknown keys
are errors, so typos do not silently fall back to defaults) and every error is one line naming
the file, the YAML line and the key: ``t4.yaml:12: key 'compute.peak_ops_per_s.int8': ...``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from cost_models._text import read_text, read_yaml
from cost_models.analytic import (
    AnalyticModel,
    BitFusionModel,
    BitSerialModel,
    CPUModel,
    FixedNPUModel,
    GPUTensorCoreModel,
    MacEnergy,
    MemoryLevel,
)
from cost_models.base import CostModel
from hawq_search.core.exceptions import CostModelError

__all__ = ["load_profile", "model_from_dict", "KINDS", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
KINDS = ("bit_serial", "bit_flexible", "fixed_npu", "gpu_tensor_core", "cpu")
TOP_KEYS = {
    "schema_version", "name", "kind", "description", "batch", "clock_hz", "double_buffered",
    "efficiency", "overhead_s", "overhead_cycles", "float_bits", "storage_containers", "memory",
    "energy", "compute", "cost_table", "table", "measurement", "notes", "other_ops",
}  # fmt: skip
OTHER_OPS_KEYS = {"model", "fingerprint", "latency_s", "note"}
COMPUTE_KEYS = {
    "bit_serial": {"array", "serial", "parallel_bits", "depthwise_law"},
    "bit_flexible": {"rows", "cols", "pmax", "pmin"},
    "fixed_npu": {"macs_per_cycle", "pairs", "float_slowdown", "array"},
    "gpu_tensor_core": {"peak_ops_per_s", "channel_tile"},
    "cpu": {"cores", "simd_bits", "fma_per_cycle", "int8_speedup"},
}
MEMORY_KEYS = {"name", "bandwidth_Bps", "bandwidth_bits_per_cycle", "pj_per_bit", "holds",
               "buffer_bytes"}  # fmt: skip
MAC_MODELS = {
    "none": set(),
    "fixed_width": {"c0", "c1", "c2"},
    "multiplier": {"mul8_pj", "add32_pj", "acc_bits"},
    "per_mac": {"pj"},
    "per_unit_cycle": {"pj"},
}
GPU_PRECISION_NAMES = ("int1", "int4", "int8", "fp16", "fp32")


class _Ctx:
    """Error reporting: file name plus the YAML line of every dotted key."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source, self.lines = source, lines

    def fail(self, key: str, problem: str) -> CostModelError:
        parts = key.split(".")
        line = None
        while parts and line is None:  # nearest enclosing key that has a line
            joined = ".".join(parts)
            line = self.lines.get(joined) or self.lines.get(re.sub(r"\[\d+\]", "", joined))
            parts.pop()
        where = f"{self.source}:{line}" if line else self.source
        return CostModelError(f"{where}: key '{key}': {problem}")

    def num(self, d: dict, key: str, path: str, *, default: Any = None, positive: bool = True,
            allow_zero: bool = False) -> Any:  # fmt: skip
        """A finite number (YAML 1.1 reads ``4e9`` as a string, so numeric strings are accepted)."""
        if key not in d or d[key] is None:
            if default is None:
                raise self.fail(f"{path}{key}", "required key missing")
            return default
        v = d[key]
        try:
            if isinstance(v, bool):
                raise ValueError
            x = float(v)
        except (TypeError, ValueError):
            raise self.fail(f"{path}{key}", f"expected a number, got {v!r}") from None
        if not math.isfinite(x):
            raise self.fail(f"{path}{key}", f"expected a finite number, got {v!r}")
        if positive and (x < 0 or (x == 0 and not allow_zero)):
            bound = ">= 0" if allow_zero else "> 0"
            raise self.fail(f"{path}{key}", f"value {v!r} must be {bound}")
        return x

    def int_(self, d: dict, key: str, path: str, *, default: int | None = None) -> int:
        x = self.num(d, key, path, default=default)
        if x != int(x):
            raise self.fail(f"{path}{key}", f"expected an integer, got {d[key]!r}")
        return int(x)

    def mapping(self, d: Any, path: str, allowed: set[str]) -> dict:
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise self.fail(path.rstrip("."), f"expected a mapping, got {type(d).__name__}")
        for k in d:
            if k not in allowed:
                raise self.fail(
                    f"{path}{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})"
                )
        return d


def _key_lines(node: yaml.Node, prefix: str = "", out: dict[str, int] | None = None) -> dict:
    """Dotted key -> 1-based line, from the composed YAML node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            _key_lines(v, key + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[f"{prefix}{i}"] = v.start_mark.line + 1
            _key_lines(v, f"{prefix}{i}.", out)
    return out


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    data, node = read_yaml(path, read_text(path, "profile"))
    if not isinstance(data, dict):
        raise CostModelError(f"{path}: a profile must be a YAML mapping")
    return data, (_key_lines(node) if node is not None else {})


def load_profile(path: str | Path, *, batch: int | None = None) -> CostModel:
    """Profile YAML at ``path`` -> cost model (a table model when it names a ``cost_table``)."""
    path = Path(path)
    data, lines = _read_yaml(path)
    return model_from_dict(
        data, source=str(path), lines=lines, base_dir=path.parent, default_name=path.stem,
        batch=batch,
    )  # fmt: skip


def model_from_dict(
    data: dict,
    *,
    source: str = "<profile>",
    lines: dict[str, int] | None = None,
    base_dir: Path | None = None,
    default_name: str = "profile",
    batch: int | None = None,
) -> CostModel:
    """Validate a parsed profile and build its model; ``batch`` overrides the profile's batch."""
    ctx = _Ctx(source, lines or {})
    d = ctx.mapping(data, "", TOP_KEYS)
    version = d.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ctx.fail("schema_version", f"unsupported version {version!r} (expected 1)")
    kind = d.get("kind")
    if kind not in KINDS:
        raise ctx.fail("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    common = _common(ctx, d, kind, default_name, batch)
    comp = ctx.mapping(d.get("compute"), "compute.", COMPUTE_KEYS[kind])
    model = _BUILDERS[kind](ctx, comp, common)
    if model.clock_hz is None and kind in ("bit_serial", "bit_flexible", "fixed_npu"):
        raise ctx.fail("clock_hz", f"required key missing (kind {kind} counts cycles)")
    other_ops = _other_ops(ctx, d.get("other_ops"))
    if "cost_table" in d:
        from cost_models.table import TableCostModel, load_cost_table

        interp = _table_interpolation(ctx, d, kind)
        rel = d["cost_table"]
        if not isinstance(rel, str) or not rel:
            raise ctx.fail("cost_table", f"expected a file name, got {rel!r}")
        table_path = Path(rel) if Path(rel).is_absolute() else (base_dir or Path(".")) / rel
        if not table_path.exists():
            raise ctx.fail("cost_table", f"file not found: {table_path}")
        table = load_cost_table(table_path)
        model = TableCostModel(model, table, interpolation=interp)
    model.other_ops = other_ops
    return model


def _other_ops(ctx: _Ctx, v: Any) -> dict[str, float]:
    """``other_ops``: measured time of a model's non-quantizable ops, per model fingerprint."""
    if v is None:
        return {}
    if not isinstance(v, list):
        raise ctx.fail("other_ops", "expected a list of {model, fingerprint, latency_s}")
    out = {}
    for k, item in enumerate(v):
        path = f"other_ops[{k}]."
        item = ctx.mapping(item, path, OTHER_OPS_KEYS)
        fp = item.get("fingerprint")
        if not isinstance(fp, str) or not fp:
            raise ctx.fail(f"{path}fingerprint", "required string missing")
        out[fp] = ctx.num(item, "latency_s", path, allow_zero=True)
    return out


def _table_interpolation(ctx: _Ctx, d: dict, kind: str) -> str:
    t = ctx.mapping(d.get("table"), "table.", {"interpolation"})
    default = "bilinear" if kind == "bit_serial" else "stepwise"
    interp = t.get("interpolation", default)
    if interp not in ("bilinear", "stepwise"):
        raise ctx.fail("table.interpolation", f"expected bilinear or stepwise, got {interp!r}")
    return interp


def _common(ctx: _Ctx, d: dict, kind: str, default_name: str, batch: int | None) -> dict:
    clock = ctx.num(d, "clock_hz", "", default=0.0) or None
    common: dict[str, Any] = {
        "name": str(d.get("name") or default_name),
        "description": " ".join(str(d.get("description", "")).split()),
        "batch": batch if batch is not None else ctx.int_(d, "batch", "", default=1),
        "clock_hz": clock,
        "double_buffered": bool(d.get("double_buffered", True)),
        "efficiency": ctx.num(d, "efficiency", "", default=1.0),
        "float_bits": ctx.int_(d, "float_bits", "", default=16),
    }
    if common["batch"] < 1:
        raise ctx.fail("batch", f"must be >= 1, got {common['batch']}")
    over = ctx.num(d, "overhead_s", "", default=0.0, allow_zero=True)
    if "overhead_cycles" in d:
        cyc = ctx.num(d, "overhead_cycles", "", allow_zero=True)
        if not clock:
            raise ctx.fail("overhead_cycles", "needs clock_hz")
        over += cyc / clock
    common["overhead_s"] = over
    common["storage_containers"] = _containers(ctx, d.get("storage_containers", "dense"))
    common["memory"] = _memory(ctx, d.get("memory", []), clock)
    energy = ctx.mapping(d.get("energy"), "energy.", {"mac", "static_w"})
    common["static_w"] = ctx.num(energy, "static_w", "energy.", default=0.0, allow_zero=True)
    common["mac_energy"] = _mac(ctx, energy.get("mac"))
    common["kind"] = kind
    return common


def _containers(ctx: _Ctx, v: Any) -> tuple[int, ...] | None:
    if v == "dense" or v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(b, int) and b > 0 for b in v):
        raise ctx.fail("storage_containers", f"expected 'dense' or a list of bit-widths, got {v!r}")
    return tuple(sorted(v))


def _memory(ctx: _Ctx, v: Any, clock: float | None) -> tuple[MemoryLevel, ...]:
    if not isinstance(v, list):
        raise ctx.fail("memory", f"expected a list of levels, got {type(v).__name__}")
    levels = []
    for i, raw in enumerate(v):
        p = f"memory.{i}."
        lv = ctx.mapping(raw, p, MEMORY_KEYS)
        if "name" not in lv:
            raise ctx.fail(f"{p}name", "required key missing")
        if "bandwidth_bits_per_cycle" in lv:
            if not clock:
                raise ctx.fail(f"{p}bandwidth_bits_per_cycle", "needs clock_hz")
            bw = ctx.num(lv, "bandwidth_bits_per_cycle", p) * clock / 8
        else:  # no bandwidth: the level costs energy but never limits time
            bw = ctx.num(lv, "bandwidth_Bps", p, default=0.0, allow_zero=True)
        holds = lv.get("holds", ["weights", "inputs", "outputs"])
        if not isinstance(holds, list) or not set(holds) <= {"weights", "inputs", "outputs"}:
            raise ctx.fail(f"{p}holds", f"expected a subset of [weights, inputs, outputs], got {holds!r}")  # fmt: skip
        buf = ctx.num(lv, "buffer_bytes", p, default=0.0) or None
        levels.append(
            MemoryLevel(
                name=str(lv["name"]),
                bandwidth_Bps=bw,
                pj_per_bit=ctx.num(lv, "pj_per_bit", p, default=0.0, allow_zero=True),
                holds=tuple(holds),
                buffer_bytes=buf,
            )
        )
    return tuple(levels)


def _mac(ctx: _Ctx, v: Any) -> MacEnergy:
    if v is None:
        return MacEnergy()
    if not isinstance(v, dict) or v.get("model") not in MAC_MODELS:
        raise ctx.fail("energy.mac.model", f"expected one of {', '.join(MAC_MODELS)}")
    model = v["model"]
    ctx.mapping(v, "energy.mac.", MAC_MODELS[model] | {"model"})
    kw: dict[str, Any] = {"model": model}
    defaults = MacEnergy()
    for key in MAC_MODELS[model]:
        kw[key] = ctx.num(v, key, "energy.mac.", default=getattr(defaults, key) or None,
                          allow_zero=True)  # fmt: skip
    if "acc_bits" in kw:
        kw["acc_bits"] = int(kw["acc_bits"])
    return MacEnergy(**kw)


def _array(ctx: _Ctx, v: Any, path: str) -> tuple[int, int, int]:
    a = ctx.mapping(v, path, {"Dm", "Dk", "Dn"})
    return ctx.int_(a, "Dm", path), ctx.int_(a, "Dk", path), ctx.int_(a, "Dn", path)


def _bit_serial(ctx: _Ctx, c: dict, common: dict) -> AnalyticModel:
    dm, dk, dn = _array(ctx, c.get("array"), "compute.array.")
    serial = c.get("serial", "both")
    if serial not in ("both", "weights", "activations"):
        raise ctx.fail("compute.serial", f"expected both, weights or activations, got {serial!r}")
    law = c.get("depthwise_law", "gemm")
    if law not in ("gemm", "activation_serial"):
        raise ctx.fail("compute.depthwise_law", f"expected gemm or activation_serial, got {law!r}")
    return BitSerialModel(
        **common, dm=dm, dk=dk, dn=dn, serial=serial, depthwise_law=law,
        parallel_bits=ctx.int_(c, "parallel_bits", "compute.", default=16),
    )  # fmt: skip


def _bit_flexible(ctx: _Ctx, c: dict, common: dict) -> AnalyticModel:
    pmax = ctx.int_(c, "pmax", "compute.", default=8)
    pmin = ctx.int_(c, "pmin", "compute.", default=2)
    if pmin > pmax:
        raise ctx.fail("compute.pmin", f"pmin {pmin} exceeds pmax {pmax}")
    return BitFusionModel(
        **common, rows=ctx.int_(c, "rows", "compute."), cols=ctx.int_(c, "cols", "compute."),
        pmax=pmax, pmin=pmin,
    )  # fmt: skip


def _fixed_npu(ctx: _Ctx, c: dict, common: dict) -> AnalyticModel:
    raw = c.get("pairs")
    if not isinstance(raw, list) or not raw:
        raise ctx.fail("compute.pairs", "expected a non-empty list of [w, a] or [w, a, slowdown]")
    pairs = []
    for i, p in enumerate(raw):
        ok = isinstance(p, list) and len(p) in (2, 3)
        ok = ok and all(isinstance(x, int) and 1 <= x <= 32 for x in p[:2])
        if not ok:
            raise ctx.fail(f"compute.pairs.{i}", f"expected [w_bits, a_bits(, slowdown)], got {p!r}")  # fmt: skip
        slow = ctx.num({"s": p[2] if len(p) == 3 else 1.0}, "s", f"compute.pairs.{i}.")
        pairs.append((p[0], p[1], slow))
    fs = ctx.num(c, "float_slowdown", "compute.", default=1.0)
    if fs < 1:
        raise ctx.fail("compute.float_slowdown", f"must be >= 1 (floats are never faster), got {fs}")  # fmt: skip
    arr = _array(ctx, c["array"], "compute.array.") if "array" in c else None
    return FixedNPUModel(
        **common, macs_per_cycle=ctx.int_(c, "macs_per_cycle", "compute."), pairs=tuple(pairs),
        float_slowdown=fs, array=arr,
    )  # fmt: skip


def _gpu(ctx: _Ctx, c: dict, common: dict) -> AnalyticModel:
    peaks_raw = ctx.mapping(c.get("peak_ops_per_s"), "compute.peak_ops_per_s.",
                            set(GPU_PRECISION_NAMES))  # fmt: skip
    if not peaks_raw:
        raise ctx.fail("compute.peak_ops_per_s", "required key missing")
    peaks = {k: ctx.num(peaks_raw, k, "compute.peak_ops_per_s.") for k in peaks_raw}
    ordered = [k for k in GPU_PRECISION_NAMES if k in peaks]
    for narrow, wide in zip(ordered, ordered[1:], strict=False):
        if peaks[wide] > peaks[narrow]:
            raise ctx.fail(
                f"compute.peak_ops_per_s.{wide}",
                f"{wide} peak exceeds {narrow} peak: costs would fall with more bits",
            )
    if "fp32" not in peaks:
        raise ctx.fail("compute.peak_ops_per_s.fp32", "required key missing (prices 32-bit layers)")
    tile = ctx.int_(c, "channel_tile", "compute.", default=1)
    return GPUTensorCoreModel(**common, peak_ops_per_s=peaks, channel_tile=tile)


def _cpu(ctx: _Ctx, c: dict, common: dict) -> AnalyticModel:
    if not common["clock_hz"]:
        raise ctx.fail("clock_hz", "required key missing (kind cpu)")
    sp = ctx.num(c, "int8_speedup", "compute.", default=1.33)
    if sp < 1:
        raise ctx.fail("compute.int8_speedup", f"must be >= 1 (int8 never slower than the fp32 fallback), got {sp}")  # fmt: skip
    return CPUModel(
        **common, cores=ctx.int_(c, "cores", "compute."),
        simd_bits=ctx.int_(c, "simd_bits", "compute.", default=256),
        fma_per_cycle=ctx.int_(c, "fma_per_cycle", "compute.", default=2), int8_speedup=sp,
    )  # fmt: skip


_BUILDERS = {
    "bit_serial": _bit_serial,
    "bit_flexible": _bit_flexible,
    "fixed_npu": _fixed_npu,
    "gpu_tensor_core": _gpu,
    "cpu": _cpu,
}
