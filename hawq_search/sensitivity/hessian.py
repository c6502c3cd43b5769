"""Hutchinson estimate of each layer's Hessian trace (the HAWQ-V2/V3 sensitivity).

``Tr(H_l) ~ mean_k v_k^T H v_k`` over Rademacher probes ``v`` (restricted to layer ``l``'s
weights), with Hessian-vector products by double backward, as PyHessian computes it but per layer
and with a fresh probe every iteration. Probing stops when every layer's running mean moved by
less than ``tol`` (relative to its absolute value) or after ``max_probes``. The predicted loss
increase of channel ``c`` at ``b`` bits is ``0.5 * Tr(H_l) / n_l * ||Q_b(W_c) - W_c||^2``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from hawq_search.data.datasets import TensorData
from hawq_search.graph.trace import ModelGraph
from hawq_search.sensitivity.fisher import LossFn, batch_loss, weight_deltas
from hawq_search.sensitivity.table import SensitivityTable

__all__ = ["hutchinson_traces", "hessian_sensitivity"]


def hutchinson_traces(
    model: nn.Module,
    graph: ModelGraph,
    data: TensorData,
    *,
    batch_size: int = 256,
    max_probes: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    progress=None,
    loss_fn: LossFn | None = None,
) -> tuple[dict[str, float], int]:
    """Per-layer Hessian traces of the mean loss (cross-entropy unless ``loss_fn``) on ``data``;
    returns (traces, probes)."""
    modules = dict(model.named_modules())
    weights = [modules[layer.name].weight for layer in graph.layers]
    req = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    batches = list(data.batches(batch_size))
    sums = torch.zeros(len(weights), dtype=torch.float64)
    prev = None
    probes = 0
    try:
        while probes < max_probes:
            # One probe per batch, cycling through the data: every probe sees fresh samples.
            x, y = batches[probes % len(batches)]
            x, y = x.to(weights[0].device), y.to(weights[0].device)
            loss = batch_loss(loss_fn, model(x), y) / x.shape[0]
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            vs = [torch.randint(0, 2, w.shape, generator=gen).to(w) * 2 - 1 for w in weights]
            hvs = torch.autograd.grad(grads, weights, grad_outputs=vs)
            sums += torch.tensor([float((v * hv).sum()) for v, hv in zip(vs, hvs, strict=True)])
            probes += 1
            if progress is not None:
                progress.update(1)
            mean = sums / probes
            if prev is not None and probes >= 10:
                change = ((mean - prev).abs() / (prev.abs() + 1e-6)).max()
                if change < tol:
                    break
            prev = mean
    finally:
        for p, r in req.items():
            p.requires_grad_(r)
        model.train(was_training)
    mean = sums / probes
    return {layer.name: float(mean[i]) for i, layer in enumerate(graph.layers)}, probes


def hessian_sensitivity(
    model: nn.Module,
    graph: ModelGraph,
    data: TensorData,
    w_bits: tuple[int, ...],
    a_bits: tuple[int, ...],
    act_table: SensitivityTable | None = None,
    **kwargs,
) -> SensitivityTable:
    """Weight sensitivities from Hutchinson traces. Activation sensitivities are taken from
    ``act_table`` (the Fisher estimate) when given, as HAWQ-V3 has no activation Hessian."""
    t0 = time.perf_counter()
    traces, probes = hutchinson_traces(model, graph, data, **kwargs)
    modules = dict(model.named_modules())
    weight = {}
    for layer in graph.layers:
        d = weight_deltas(modules[layer.name].weight, w_bits)  # (n_bits, C, K)
        # A negative trace estimate (possible far from a minimum) would reward quantization.
        per_param = max(traces[layer.name], 0.0) / layer.params
        weight[layer.name] = (0.5 * per_param * (d * d).sum(2)).T.double().cpu().numpy()
    act = (
        dict(act_table.act)
        if act_table is not None
        else {g: np.zeros(len(a_bits)) for g in graph.act_groups}
    )
    meta = {
        "samples": len(data),
        "probes": probes,
        "traces": traces,
        "seconds": time.perf_counter() - t0,
    }
    return SensitivityTable("hessian", w_bits, a_bits, weight, act, meta)
