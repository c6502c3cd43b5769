"""The sensitivity stage of a run: one table per method, computed once and cached in the run
directory under a key of everything it depends on (weights, calibration images, options), so a
rerun or a resumed run reuses it and changed inputs never do."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from hawq_search import __version__
from hawq_search.data.datasets import TensorData
from hawq_search.graph.trace import ModelGraph
from hawq_search.progress import progress_bar
from hawq_search.sensitivity.fisher import METHODS as FISHER_METHODS
from hawq_search.sensitivity.fisher import LossFn, fisher_sensitivity
from hawq_search.sensitivity.hessian import hessian_sensitivity
from hawq_search.sensitivity.table import SensitivityTable

__all__ = ["SensitivityRequest", "activation_ranges", "cache_key", "sensitivity_table"]


@dataclass
class SensitivityRequest:
    """What a sensitivity table depends on, besides the model and the calibration images."""

    method: str
    wbits: tuple[int, ...]
    abits: tuple[int, ...]
    clips: dict[str, dict[int, float]]
    signed: dict[str, bool]
    batch_size: int = 128
    seed: int = 0
    hessian_probes: int = 100
    progress: bool = False
    loss_fn: LossFn | None = None
    precision: str = "fp32"  # resolved by hawq_search.runtime, never "auto" here
    runtime: dict = field(default_factory=dict)  # device, precision and why: recorded in meta


def cache_key(model: nn.Module, calib: TensorData, req: SensitivityRequest, extra=()) -> str:
    """Hash of the weights, the calibration tensors and every option the table depends on."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(calib.images.detach().cpu().numpy().tobytes())
    h.update(calib.labels.detach().cpu().numpy().tobytes())
    loss = None if req.loss_fn is None else getattr(req.loss_fn, "__qualname__", "user")
    fields = [req.method, req.wbits, req.abits, req.seed, req.hessian_probes, loss, __version__,
              req.precision]  # fmt: skip
    h.update(json.dumps([fields, list(extra)], default=str).encode())
    return h.hexdigest()[:16]


def sensitivity_table(
    model: nn.Module,
    graph: ModelGraph,
    calib: TensorData,
    req: SensitivityRequest,
    *,
    cache_dir: Path | None = None,
) -> SensitivityTable:
    """The table for ``req.method``, from ``cache_dir`` when it holds one with the same key."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"sensitivity-{req.method}-{cache_key(model, calib, req)}.npz"
        if path.is_file():
            table = _cached(path, graph, req)
            if table is not None:
                return table
    t0 = time.perf_counter()
    table = _compute(model, graph, calib, req, cache_dir)
    table.meta["seconds"] = time.perf_counter() - t0
    table.meta["runtime"] = req.runtime
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.save(path)
    return table


def _cached(path: Path, graph: ModelGraph, req: SensitivityRequest) -> SensitivityTable | None:
    """The cached table, or None (with a warning) when it is unreadable or does not fit."""
    try:
        table = SensitivityTable.load(path)
        layers = {layer.name: layer.out_channels for layer in graph.layers}
        problems = table.problems(layers, list(graph.act_groups), req.wbits, req.abits)
    except ValueError as exc:
        problems = [str(exc)]
    if problems:
        warnings.warn(
            f"cached sensitivity table {path} is unusable ({'; '.join(problems[:3])}): "
            "recomputing it",
            stacklevel=3,
        )
        return None
    table.meta["cached"] = True
    return table


def _compute(model, graph, calib, req: SensitivityRequest, cache_dir) -> SensitivityTable:
    if req.method in FISHER_METHODS:
        with progress_bar(req.progress, len(calib), f"{req.method} sensitivities", "img") as bar:
            return fisher_sensitivity(
                model, graph, calib, tuple(req.wbits), tuple(req.abits), req.clips, req.signed,
                method=req.method, batch_size=req.batch_size, seed=req.seed, progress=bar,
                loss_fn=req.loss_fn, precision=req.precision,
            )  # fmt: skip
    if req.method != "hessian":
        raise ValueError(f"unknown sensitivity method {req.method!r}")
    # Hutchinson traces cover weights only: activations take the Fisher estimate.
    act_req = replace(req, method="fisher")
    act_table = sensitivity_table(model, graph, calib, act_req, cache_dir=cache_dir)
    with progress_bar(req.progress, req.hessian_probes, "Hutchinson probes", "probe") as bar:
        with torch.enable_grad():
            return hessian_sensitivity(
                model, graph, calib, tuple(req.wbits), tuple(req.abits), act_table=act_table,
                max_probes=req.hessian_probes, seed=req.seed, progress=bar, loss_fn=req.loss_fn,
            )  # fmt: skip


def activation_ranges(
    model: nn.Module, graph: ModelGraph, calib: TensorData, abits: tuple[int, ...]
) -> tuple[dict[str, dict[int, float]], dict[str, bool]]:
    """MSE clip per activation group and bit option (8 bits always, for uniform baselines),
    and whether each group's input is signed, from one pass over the calibration images."""
    from hawq_search.core.bits import is_quantized
    from hawq_search.sensitivity.calibration import act_clips, collect_act_stats

    stats = collect_act_stats(model, graph, calib)
    bits = tuple(b for b in sorted(set(abits) | {8}) if is_quantized(b))
    return act_clips(stats, bits), {g: s.signed for g, s in stats.items()}
