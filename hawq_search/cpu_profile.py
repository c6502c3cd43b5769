"""Measure per-layer latency on the local CPU with torch and write a profile + cost table.

What is timed is what this machine can really execute: fp32 (``torch.nn`` modules), and int8
through a torch quantized backend (``torch.ao.nn.quantized`` with the x86/fbgemm/onednn/qnnpack
engine) when one runs here. An int8 row times the whole eager int8 path of one layer --
quantize the float input, run the int8 kernel, dequantize the output -- because BatchNorm,
activations and adds stay in float between layers. Sub-8-bit operands have no faster kernel, so
the profile is stepwise: any bits <= 8 run at the int8 time (or the fp32 time, the fallback any
quantized layer can use by dequantizing its weights, when that is faster; the ``backend`` column
says which), anything wider at the fp32 time.

Given the model, the profile also measures its *other ops* (BatchNorm, ReLU, adds, pooling,
Python dispatch) by timing a forward in which every quantizable layer returns a precomputed
output; plans of that model add this time to their predicted latency.

Each distinct layer shape is timed once (median of ``repeats`` calls after ``warmup`` calls), so a
CIFAR ResNet-56 (7 distinct shapes) takes seconds. The written profile is a ``cpu`` kind whose
analytic fallback (for shapes not in the table and for sub-kernels) is calibrated on the
measurements: int8 speed-up, per-call overhead and memory bandwidth are measured too.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from cost_models.base import model_fingerprint
from cost_models.table import shape_key, write_cost_table
from hawq_search.core.layers import LayerInfo

__all__ = ["profile_local_cpu", "interleaved_round_medians", "INT8_ENGINES"]

INT8_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


def _median_time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _float_module(layer: LayerInfo):
    from torch import nn

    if layer.op == "linear":
        return nn.Linear(layer.in_channels, layer.out_channels, bias=layer.has_bias).eval()
    return nn.Conv2d(
        layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
        padding=layer.padding, groups=layer.groups, bias=layer.has_bias,
    ).eval()  # fmt: skip


def _int8_module(layer: LayerInfo, fmod):
    """A quantized copy of ``fmod`` (per-channel int8 weights, uint8 activations)."""
    import torch
    from torch.ao.nn import quantized as nnq

    w = fmod.weight.detach()
    scales = w.abs().flatten(1).amax(1).clamp_min(1e-8) / 127
    qw = torch.quantize_per_channel(w, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)  # fmt: skip
    bias = None if fmod.bias is None else fmod.bias.detach()
    if layer.op == "linear":
        q = nnq.Linear(layer.in_channels, layer.out_channels, bias_=fmod.bias is not None)
    else:
        q = nnq.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
            padding=layer.padding, groups=layer.groups, bias=fmod.bias is not None,
        )  # fmt: skip
    q.set_weight_bias(qw, bias)
    q.scale, q.zero_point = 0.05, 128
    return q


def _pick_engine(probe: LayerInfo, batch: int) -> tuple[str | None, str]:
    """First quantized engine that runs ``probe``; (None, reason) when none does."""
    import torch

    reasons = []
    for eng in INT8_ENGINES:
        if eng not in torch.backends.quantized.supported_engines:
            continue
        try:
            torch.backends.quantized.engine = eng
            fmod = _float_module(probe)
            q = _int8_module(probe, fmod)
            x = torch.quantize_per_tensor(torch.randn(batch, *probe.input_shape), 0.05, 128, torch.quint8)  # fmt: skip
            q(x)
            return eng, ""
        except Exception as e:  # noqa: BLE001 - any failure means "this engine does not run here"
            reasons.append(f"{eng}: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
    return None, "; ".join(reasons) or "no quantized engine in torch.backends.quantized"


def _bandwidth_Bps(repeats: int = 5) -> float:
    """Copy bandwidth (read + write) of a 64 MB tensor."""
    import torch

    src = torch.ones(16 * 2**20)
    dst = torch.empty_like(src)
    t = _median_time(lambda: dst.copy_(src), repeats, 1)
    return 2 * src.numel() * 4 / t


def _cpu_facts() -> tuple[float | None, int]:
    """(clock Hz from /proc/cpuinfo, SIMD width in bits from the ISA flags)."""
    mhz, simd = None, 128
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, simd
    for line in text.splitlines():
        if line.startswith("cpu MHz") and mhz is None:
            mhz = float(line.split(":")[1])
        if line.startswith("flags"):
            flags = set(line.split(":")[1].split())
            simd = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
            break
    return (mhz * 1e6 if mhz else None), simd


def profile_local_cpu(
    layers: list[LayerInfo],
    out_dir: str | Path,
    *,
    repeats: int = 50,
    warmup: int = 10,
    batch: int = 1,
    threads: int | None = None,
    name: str = "local_cpu",
    int8: bool = True,
    model=None,
    input_shape: tuple[int, ...] | None = None,
    model_name: str = "model",
    rounds: int = 10,
) -> Path:
    """Time ``layers`` here; write ``<name>.yaml`` + ``<name>.costs.csv`` in ``out_dir``.

    Returns the profile path (load it with ``load_accelerator(path)``). ``threads`` defaults to
    torch's current setting; it is restored afterwards. The ``repeats`` calls per measurement are
    spread over ``rounds`` interleaved rounds. With ``model`` (the torch module the
    layers come from) and its per-sample ``input_shape``, its other ops are timed too.
    """
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_threads, old_engine = torch.get_num_threads(), torch.backends.quantized.engine
    n_threads = threads or old_threads
    torch.set_num_threads(n_threads)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", UserWarning)  # quantized-tensor deprecation notices
            other = None
            if model is not None and input_shape is not None:
                other = (model_name, _other_ops_call(model, layers, input_shape, batch))
            return _profile(
                layers, out_dir, repeats, warmup, batch, n_threads, name, int8, other, rounds
            )
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.quantized.engine = old_engine


class _Precomputed:
    """Stands in for a layer: returns its recorded output, so only the other ops are timed."""

    def __new__(cls, out):
        import torch

        class Stub(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.out = out

            def forward(self, *args, **kwargs):
                return self.out

        return Stub()


def _other_ops_call(model, layers: list[LayerInfo], input_shape, batch) -> Callable[[], object]:
    """A forward of a copy of ``model`` with every quantizable layer replaced by its output."""
    import copy

    import torch

    net = copy.deepcopy(model).eval()
    x = torch.randn(batch, *input_shape)
    mods = dict(net.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        mods[layer.name].register_forward_hook(
            lambda m, i, y, n=layer.name: outputs.__setitem__(n, y)
        )
        for layer in layers
    ]
    net(x)
    for h in hooks:
        h.remove()
    for layer in layers:
        parent, _, child = layer.name.rpartition(".")
        setattr(mods[parent] if parent else net, child, _Precomputed(outputs[layer.name]))
    return lambda: net(x)


def interleaved_round_medians(
    jobs: dict[str, Callable[[], object]],
    *,
    rounds: int,
    per_round: int,
    warmup: int,
    rewarm: int = 2,
) -> dict[str, list[float]]:
    """Time every job in ``rounds`` rounds that visit the jobs in turn: ``per_round`` timed calls
    per job and round (after ``warmup`` calls in the first round, ``rewarm`` later). Returns each
    job's round medians; the smallest is the figure to use, since noise only adds time."""
    samples: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(rounds):
        for k, fn in jobs.items():
            samples[k].append(_median_time(fn, per_round, warmup if r == 0 else rewarm))
    return samples


def _profile(layers, out_dir, repeats, warmup, batch, n_threads, name, int8, other, rounds) -> Path:
    import torch

    unique, skipped = _unique_shapes(layers, batch)
    engine, why = _pick_engine(next(iter(unique.values())), batch) if int8 else (None, "disabled")
    if int8 and engine is None:
        warnings.warn(f"no torch int8 backend runs here ({why}); recording fp32 only", stacklevel=3)
    jobs, int8_failures = _timing_jobs(unique, batch, engine, other)
    # Every timed call, run in interleaved rounds; the fastest round's median is kept: noise on
    # a shared machine only ever adds time, and slow phases come and go (neighbours, frequency).
    rounds = max(1, min(rounds, repeats))
    t = {
        k: min(v)
        for k, v in interleaved_round_medians(
            jobs, rounds=rounds, per_round=-(-repeats // rounds), warmup=warmup
        ).items()
    }
    rows, speedups = _table_rows(unique, t, engine, repeats)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = {
        "host": platform.processor() or platform.machine(),
        "src": f"measured by hawq_search.cpu_profile on this machine ({when}, torch {torch.__version__})",
        "when": when,
        "torch": torch.__version__,
        "int8_note": (
            f"int8 via torch quantized engine {engine}" if engine
            else f"int8 backend unavailable ({why}); all bits run at fp32 speed"
        ),
    }  # fmt: skip
    if int8_failures:
        info["int8_note"] += f"; int8 failed for {', '.join(int8_failures)} (fp32 used)"
    table = out_dir / f"{name}.costs.csv"
    write_cost_table(table, rows, comment=f"{name}: {info['host']}, {n_threads} threads, batch {batch}; {info['src']}; {info['int8_note']}")  # fmt: skip
    profile = out_dir / f"{name}.yaml"
    other = None if other is None else (other[0], t["other"])
    profile.write_text(
        _profile_yaml(
            name, table, batch, n_threads, info, max(1.0, statistics.median(speedups)),
            len(speedups), t["tiny"], layers, other, repeats, warmup, engine, skipped,
        )
    )  # fmt: skip
    return profile


def _unique_shapes(layers, batch: int) -> tuple[dict[tuple, LayerInfo], list[str]]:
    """One layer per distinct shape the cost table can express, and the layers it cannot."""
    unique: dict[tuple, LayerInfo] = {}
    skipped = []
    for layer in layers:
        key = shape_key(layer, batch)
        if key is None:
            skipped.append(layer.name)
            continue
        unique.setdefault((key, layer.padding, layer.has_bias), layer)
    if not unique:
        raise ValueError("no layer with a shape the cost table can express (asymmetric strides?)")
    return unique, skipped


def _timing_jobs(unique, batch: int, engine, other) -> tuple[dict[str, Callable[[], object]], list]:
    """The calls to time: fp32 (and eager int8) per shape, a tiny conv for the per-call
    overhead, and the model's other ops when given."""
    import torch

    jobs: dict[str, Callable[[], object]] = {}
    int8_failures = []
    for layer in unique.values():
        fmod = _float_module(layer)
        x = torch.randn(batch, *layer.input_shape)
        jobs[f"fp32:{layer.name}"] = lambda fmod=fmod, x=x: fmod(x)
        if engine is not None:
            try:
                q = _int8_module(layer, fmod)

                def eager_int8(q=q, x=x):
                    return q(torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)).dequantize()

                eager_int8()
                jobs[f"int8:{layer.name}"] = eager_int8
            except Exception as e:  # noqa: BLE001 - fall back to fp32 for this shape
                int8_failures.append(f"{layer.name}: {type(e).__name__}")
    tiny = _float_module(LayerInfo("tiny", "conv2d", 1, 1, (1, 1), (1, 1), (0, 0), 1, (1, 1, 1), (1, 1, 1), (1, 1, 1, 1), False, 1, 1, "tiny"))  # fmt: skip
    xt = torch.randn(1, 1, 1, 1)
    jobs["tiny"] = lambda: tiny(xt)
    if other is not None:
        jobs["other"] = other[1]
    return jobs, int8_failures


def _table_rows(unique, t: dict[str, float], engine, repeats: int) -> tuple[list[dict], list]:
    """Cost-table rows (8-bit at the faster of int8 and fp32; 16/32-bit at fp32) and the
    measured fp32/int8 speed-ups."""
    rows, speedups = [], []
    for (key, _, _), layer in unique.items():
        t32 = t[f"fp32:{layer.name}"]
        t8, backend = t32, "fp32"
        ti = t.get(f"int8:{layer.name}")
        if ti is not None and ti < t32:
            t8, backend = ti, f"int8-{engine}"
        speedups.append(t32 / t8)
        base = {f: getattr(key, f) for f in key.__dataclass_fields__}
        common = {"layer": layer.name, "n_runs": repeats}
        rows.append({**base, "w_bits": 8, "a_bits": 8, "latency_s": f"{t8:.6g}", "backend": backend, **common})  # fmt: skip
        for bits in (16, 32):
            rows.append({**base, "w_bits": bits, "a_bits": bits, "latency_s": f"{t32:.6g}", "backend": "fp32", **common})  # fmt: skip
    return rows, speedups


def _profile_yaml(
    name, table, batch, n_threads, info, speedup, n_speedups, overhead, layers, other, repeats,
    warmup, engine, skipped,
) -> str:  # fmt: skip
    """The profile YAML text, every number with its source."""
    bandwidth = _bandwidth_Bps()
    clock, simd = _cpu_facts()
    host, src, when, int8_note = info["host"], info["src"], info["when"], info["int8_note"]
    torch_version = info["torch"]
    return f"""# Local CPU profile written by hawq_search.cpu_profile.profile_local_cpu.
# Latencies of the layers listed in {table.name} are measured; other shapes use the analytic cpu
# model below, scaled by the median measured/analytic ratio of the table rows.
schema_version: 1
name: {name}
kind: cpu
description: >
  {host} with {n_threads} torch threads, batch {batch}. Stepwise: bits <= 8 run at int8 speed
  ({int8_note}), wider bits at fp32 speed.
batch: {batch}                          # src: {src}
clock_hz: {clock or 2.0e9:.4g}                 # src: {"/proc/cpuinfo (cpu MHz)" if clock else "[R] assumption, /proc/cpuinfo unreadable"}
compute:
  cores: {n_threads}                         # src: torch.get_num_threads() during the measurement
  simd_bits: {simd}                     # src: /proc/cpuinfo ISA flags (avx512f / avx2)
  fma_per_cycle: 2                  # src: [R] two FMA ports (Intel optimization manual, Haswell and later); absorbed by the fitted efficiency
  int8_speedup: {speedup:.4g}              # src: {src}: median fp32/int8 time over {n_speedups} shapes
overhead_s: {overhead:.4g}                 # src: {src}: median call time of a 1x1 conv on 1 pixel
storage_containers: [8, 16, 32]     # src: [R] int8 and float containers; sub-8-bit runs as int8
memory:
  - name: dram
    bandwidth_Bps: {bandwidth:.4g}         # src: {src}: 64 MB tensor copy
energy:
  mac: {{model: none}}
  static_w: {5.0 * n_threads:.3g}                   # src: [R] assumption, ~5 W per busy core; set your machine's package power
cost_table: {table.name}
table:
  interpolation: stepwise{_other_ops_yaml(layers, batch, other, src)}
measurement:
  torch: "{torch_version}"
  threads: {n_threads}
  repeats: {repeats}
  warmup: {warmup}
  int8_engine: {engine or "none"}
  skipped_layers: {json.dumps(skipped)}
  date: "{when}"
"""


def _other_ops_yaml(layers, batch: int, other, src: str) -> str:
    if other is None:
        return ""
    model_name, seconds = other
    return f"""
other_ops:                          # BatchNorm, activations, adds, pooling, dispatch of this model
  - model: {json.dumps(model_name)}
    fingerprint: {model_fingerprint(layers, batch)}      # layer shapes + batch: used for this model only
    latency_s: {seconds:.4g}          # src: {src}: forward with every quantizable layer precomputed"""
