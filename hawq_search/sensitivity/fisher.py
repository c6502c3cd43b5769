"""Fisher sensitivities from per-sample gradients, one forward and one or two backwards per batch.

For every quantizable layer the per-sample weight gradient ``G_n`` (shape ``C_out x fan_in``) is
rebuilt from the layer input and output gradient that one ordinary backward pass provides
(``G_n = dy_n · x_n`` summed over kernel taps), instead of running a vmap over samples.
Parameters do not require grad, so autograd never forms the batch weight gradient.

Estimates of the loss increase caused by a weight perturbation ``Δ = Q_b(W) - W``, for every
output channel ``c`` and bit option ``b``:

* diagonal: ``0.5 * Σ_i F_ii Δ_i²`` with ``F_ii = mean_n G_n,i²`` (diagonal Fisher);
* block: ``0.5 * mean_n (G_n,c · Δ_c)²`` -- the Fisher restricted to the block of
  channel ``c``, off-diagonal terms included. Quantization errors within a channel are correlated
  through the shared scale, which the diagonal ignores.

Methods: ``fisher-diag`` (diagonal, true labels -- the textbook empirical-Fisher formula),
``empirical-fisher`` (block, true labels), ``sampled-fisher`` (block, sampled labels) and the
default ``fisher``, which takes each layer's total from ``sampled-fisher`` and spreads it over the
layer's channels in proportion to ``fisher-diag`` (two backward passes per batch).

True labels give the *empirical* Fisher; sampled labels draw each sample's label from the model's own softmax, a Monte-Carlo estimate of the true Fisher, which
equals the Gauss-Newton approximation of the Hessian for cross-entropy. A well-trained model
fits its training labels, so empirical-Fisher gradients are dominated by the few misfit samples;
the sampled-label Fisher does not have that bias (Kunstner et al., NeurIPS 2019). Measured on
ResNet-20 (benchmarks/results/sensitivity_fidelity.md), its layer totals rank the measured loss
increases on the calibration images at Spearman 0.890, against 0.872 for the empirical block
Fisher, 0.846 for the diagonal and 0.860 for Hutchinson traces; on held-out images all four fall
to 0.74-0.78.

Activation sensitivities use the same estimator on the gradient w.r.t. each quantizer's output,
``0.5 * mean_n (g_n · (Q_b(x_n) - x_n))²`` (block) or its diagonal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hawq_search.core.layers import LayerInfo
from hawq_search.data.datasets import TensorData
from hawq_search.graph.trace import ModelGraph
from hawq_search.quant.activation import quantize_activation
from hawq_search.quant.weight import is_quantized, mse_weight_scales, quantize_per_channel
from hawq_search.sensitivity.table import SensitivityTable

__all__ = [
    "METHODS",
    "LossFn",
    "batch_loss",
    "fisher_sensitivity",
    "per_sample_grads",
    "weight_deltas",
]

# (outputs, targets) -> per-sample losses (shape [B]) or their mean (a scalar).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_loss(
    loss_fn: LossFn | None, outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The *sum* over the batch of per-sample losses: its gradient w.r.t. a layer output is the
    stack of per-sample gradients. Cross-entropy when ``loss_fn`` is None; a user loss may
    return per-sample values or their mean (scaled back to the sum)."""
    if loss_fn is None:
        return F.cross_entropy(outputs.float(), targets, reduction="sum")
    loss = loss_fn(outputs.float(), targets)
    return loss * outputs.shape[0] if loss.dim() == 0 else loss.sum()


def weight_deltas(weight: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
    """``Q_b(W) - W`` per bit option, shape ``(len(bits), C_out, fan_in)``; 0 for 16/32."""
    w = weight.detach().float().cpu().reshape(weight.shape[0], -1)
    out = torch.zeros(len(bits), *w.shape)
    for i, b in enumerate(bits):
        if is_quantized(b):
            scales = mse_weight_scales(w, b)
            full = torch.full((w.shape[0],), b, dtype=torch.int64)
            out[i] = quantize_per_channel(w, full, scales) - w
    return out.to(weight.device)


def per_sample_grads(
    layer: LayerInfo, x: torch.Tensor, gy: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-sample weight gradients ``(B, C_out, fan_in)`` of a Conv2d or Linear layer.

    ``dtype=torch.bfloat16`` halves the matmul time at ~0.4 % relative error per entry.
    """
    b = x.shape[0]
    if layer.op == "linear":
        x2 = x.to(dtype).reshape(b, -1, x.shape[-1])
        g2 = gy.to(dtype).reshape(b, -1, gy.shape[-1])
        return torch.bmm(g2.transpose(1, 2), x2).float()
    # Sum of one batched matmul per kernel tap over shifted views of the padded input: several
    # times faster on CPU than materialising F.unfold's im2col buffer.
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = layer.padding
    dh, dw = layer.dilation
    ho, wo = gy.shape[-2], gy.shape[-1]
    g = layer.groups
    cin_g, cout_g = x.shape[1] // g, layer.out_channels // g
    xp = F.pad(x, (pw, pw, ph, ph)).to(dtype)
    gy = gy.to(dtype).reshape(b * g, cout_g, ho * wo)
    out = torch.empty(b * g, cout_g, cin_g, kh, kw, dtype=dtype, device=x.device)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            tap = xp[:, :, r0 : r0 + sh * (ho - 1) + 1 : sh, c0 : c0 + sw * (wo - 1) + 1 : sw]
            tap = tap.reshape(b * g, cin_g, ho * wo)
            out[:, :, :, i, j] = torch.bmm(gy, tap.transpose(1, 2))
    return out.reshape(b, layer.out_channels, cin_g * kh * kw).float()


class _Recorder:
    """Forward hooks keeping each layer's input and an alias whose gradient is the layer's
    own input gradient (the part of dL/dx flowing through this layer only)."""

    def __init__(self, model: nn.Module, graph: ModelGraph) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = []
        for layer in graph.layers:
            m = modules[layer.name]
            self.handles.append(m.register_forward_pre_hook(self._pre(layer.name)))
            self.handles.append(m.register_forward_hook(self._post(layer.name)))

    def _pre(self, name):
        def hook(_m, inputs):
            x = inputs[0]
            alias = x.view_as(x)
            self.inputs[name] = x.detach()
            self.aliases[name] = alias
            return (alias,) + tuple(inputs[1:])

        return hook

    def _post(self, name):
        def hook(_m, _inputs, out):
            self.outputs[name] = out
            return out

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass(frozen=True)
class _Pass:
    """One backward pass per batch: which labels, and which statistics it feeds."""

    labels: str  # "true" or "sampled"
    weight: tuple[str, ...]  # subset of ("block", "diag", "block_total")
    act: str | None  # "block", "diag" or None


# method -> backward passes per batch. "fisher" takes each layer's total from the sampled-label
# block Fisher (best agreement with measured layer loss increases) and distributes it over
# channels in proportion to the true-label diagonal Fisher estimate (the least noisy per-channel
# signal; see benchmarks/results for both comparisons).
METHODS: dict[str, tuple[_Pass, ...]] = {
    "fisher": (_Pass("true", ("diag",), None), _Pass("sampled", ("block_total",), "block")),
    "empirical-fisher": (_Pass("true", ("block",), "block"),),
    "fisher-diag": (_Pass("true", ("diag",), "diag"),),
    "sampled-fisher": (_Pass("sampled", ("block",), "block"),),
}


class _Sums:
    """Running sums over samples of every statistic the passes feed."""

    def __init__(self, deltas: dict[str, torch.Tensor], groups, n_abits: int, passes) -> None:
        kinds = {k for p in passes for k in p.weight}
        self.block = (
            {n: d.new_zeros(d.shape[:2]) for n, d in deltas.items()} if "block" in kinds else {}
        )
        self.diag = (
            {n: d.new_zeros(d.shape[1:]) for n, d in deltas.items()} if "diag" in kinds else {}
        )
        self.block_total = (
            {n: d.new_zeros(d.shape[0]) for n, d in deltas.items()}
            if "block_total" in kinds
            else {}
        )
        device = next(iter(deltas.values())).device
        self.act = {g: torch.zeros(n_abits, device=device) for g in groups}


def fisher_sensitivity(
    model: nn.Module,
    graph: ModelGraph,
    data: TensorData,
    w_bits: tuple[int, ...],
    a_bits: tuple[int, ...],
    act_clips: dict[str, dict[int, float]],
    act_signed: dict[str, bool],
    *,
    method: str = "fisher",
    batch_size: int = 128,
    precision: str = "fp32",
    seed: int = 0,
    progress=None,
    loss_fn: LossFn | None = None,
) -> SensitivityTable:
    """Fisher sensitivity table of ``model`` on ``data`` (see the module docstring for methods),
    computed on the model's device.

    ``loss_fn`` replaces cross-entropy (see :func:`batch_loss`). Labels can only be sampled
    from the model for cross-entropy, so with a user loss the sampled-label passes use the true
    targets (``meta["labels"]`` says which were used).

    ``precision="bf16"`` runs the forward/backward pass under bfloat16 autocast and forms
    per-sample gradients in bfloat16 (accumulation stays in float32): about twice as fast where
    the hardware runs bf16 natively, several times slower where it is emulated
    (``hawq_search.runtime`` decides), with rank agreement to the float32 table above 0.99
    (tests/test_sensitivity.py). ``"fp16"`` (GPUs) likewise.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    deltas = {
        layer.name: weight_deltas(modules[layer.name].weight, w_bits) for layer in graph.layers
    }
    ctx = _Context(graph, METHODS[method], deltas, a_bits, act_clips, act_signed, dtype, loss_fn)
    sums = _Sums(deltas, graph.act_groups, len(a_bits), ctx.passes)
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    rec = _Recorder(model, graph)
    n_total = 0
    gen = torch.Generator().manual_seed(seed)
    try:
        for x, y in data.batches(batch_size):
            _batch(model, rec, ctx, sums, x, y, gen)
            n_total += x.shape[0]
            if progress is not None:
                progress.update(x.shape[0])
    finally:
        rec.close()
        for p, r in zip(params, req, strict=True):
            p.requires_grad_(r)
        model.train(was_training)

    weight = {name: _weight_estimate(method, name, d, sums, n_total) for name, d in deltas.items()}
    act = {g: (0.5 * v / n_total).double().cpu().numpy() for g, v in sums.act.items()}
    meta = {
        "samples": n_total,
        "seconds": time.perf_counter() - t0,
        "precision": precision,
        "labels": "true" if loss_fn is not None else sorted({p.labels for p in ctx.passes}),
        "loss": "cross-entropy" if loss_fn is None else getattr(loss_fn, "__name__", "user"),
    }
    return SensitivityTable(method, w_bits, a_bits, weight, act, meta)


@dataclass(frozen=True)
class _Context:
    """What every batch of one sensitivity computation shares."""

    graph: ModelGraph
    passes: tuple[_Pass, ...]
    deltas: dict[str, torch.Tensor]
    a_bits: tuple[int, ...]
    act_clips: dict
    act_signed: dict
    dtype: torch.dtype
    loss_fn: LossFn | None


def _batch(model, rec: _Recorder, ctx: _Context, sums: _Sums, x, y, gen) -> None:
    """One forward and one backward per pass of ``ctx.passes``, added to ``sums``."""
    device = next(iter(ctx.deltas.values())).device
    x = x.to(device).clone().requires_grad_(True)
    y = y.to(device)
    rec.inputs.clear(), rec.aliases.clear(), rec.outputs.clear()
    low = ctx.dtype != torch.float32
    with torch.autocast(device.type, dtype=ctx.dtype, enabled=low):
        logits = model(x)
    layers = ctx.graph.layers
    outs = [rec.outputs[layer.name] for layer in layers]
    aliases = [rec.aliases[layer.name] for layer in layers]
    for k, pas in enumerate(ctx.passes):
        labels = y
        if pas.labels == "sampled" and ctx.loss_fn is None:
            probs = logits.detach().float().softmax(1).cpu()  # the seeded generator is on CPU
            labels = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
        loss = batch_loss(ctx.loss_fn, logits, labels)
        wanted = outs + (aliases if pas.act else [])
        grads = torch.autograd.grad(loss, wanted, retain_graph=k < len(ctx.passes) - 1)
        _accumulate(
            ctx.graph, rec, pas, grads, ctx.deltas, sums, ctx.a_bits, ctx.act_clips,
            ctx.act_signed, ctx.dtype,
        )  # fmt: skip


def _weight_estimate(method: str, name: str, d: torch.Tensor, sums: _Sums, n: int) -> np.ndarray:
    """(C, n_bits) predicted loss increase of one layer from the accumulated sums."""
    if sums.block:
        est = 0.5 * sums.block[name] / n
    else:
        est = 0.5 * torch.einsum("ck,bck->bc", sums.diag[name] / n, d * d)
        if sums.block_total:
            total = 0.5 * sums.block_total[name] / n
            share = est.sum(1, keepdim=True)
            est = torch.where(share > 0, est * (total.unsqueeze(1) / share.clamp_min(1e-30)), 0.0)
    return est.T.double().cpu().numpy()


def _accumulate(graph, rec, pas, grads, deltas, sums, a_bits, act_clips, act_signed, dtype) -> None:
    """Add one backward pass's per-sample terms to the running sums."""
    n_layers = len(graph.layers)
    gys = grads[:n_layers]
    gxs = grads[n_layers:] if pas.act else [None] * n_layers
    batch = gys[0].shape[0]
    group_d = {
        g: gys[0].new_zeros(batch, len(a_bits), dtype=torch.float32) for g in graph.act_groups
    }
    for layer, gy, gx in zip(graph.layers, gys, gxs, strict=True):
        xin = rec.inputs[layer.name]
        G = per_sample_grads(layer, xin, gy, dtype)
        if "diag" in pas.weight:
            sums.diag[layer.name] += (G * G).sum(0)
        if "block" in pas.weight or "block_total" in pas.weight:
            dd = torch.einsum("nck,bck->nbc", G, deltas[layer.name]) ** 2
            if "block" in pas.weight:
                sums.block[layer.name] += dd.sum(0)
            if "block_total" in pas.weight:
                sums.block_total[layer.name] += dd.sum((0, 2))
        if pas.act:
            _accumulate_act(
                group_d[layer.act_group],
                sums.act,
                layer,
                xin.float(),
                gx.float(),
                a_bits,
                act_clips,
                act_signed,
                pas.act,
            )
    if pas.act == "block":
        for g, d in group_d.items():
            sums.act[g] += (d * d).sum(0)


def _accumulate_act(group_d, a_acc, layer, xin, gx, a_bits, act_clips, act_signed, mode) -> None:
    """Add this consumer's share of the activation-perturbation terms of its group."""
    group = layer.act_group
    for j, b in enumerate(a_bits):
        if b >= 16:
            continue
        err = quantize_activation(xin, b, act_clips[group][b], act_signed[group]) - xin
        if mode == "block":
            group_d[:, j] += (gx * err).reshape(xin.shape[0], -1).sum(1)
        else:
            a_acc[group][j] += ((gx * err) ** 2).sum()
