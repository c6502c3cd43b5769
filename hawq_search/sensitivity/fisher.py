"""Fisher sensitivities from per-sample gradients: one forward and one backward per batch.

For every quantizable layer the per-sample weight gradient ``G_n`` (shape ``C_out x fan_in``) is
rebuilt from the layer input and output gradient that one ordinary backward pass provides, a
few samples at a time (:func:`per_sample_grads`: one grouped-convolution weight gradient per
chunk), squared and contracted while still in cache, instead of running a vmap over samples. Each
gradient is used in a tensor hook the moment backward forms it, and freed. Parameters do not
require grad, so autograd never forms the batch weight gradient, and
eval-mode BatchNorms run folded into their convs (:mod:`.folding`). On a 2-core
AVX2 EPYC this costs about one FP32 training step over the same images
(benchmarks/results/sensitivity_speed.md).

Estimates of the loss increase caused by a weight perturbation ``Δ = Q_b(W) - W``, for every
output channel ``c`` and bit option ``b``:

* diagonal: ``0.5 * Σ_i F_ii Δ_i²`` with ``F_ii = mean_n G_n,i²`` (diagonal Fisher);
* block: ``0.5 * mean_n (G_n,c · Δ_c)²`` -- the Fisher restricted to the block of
  channel ``c``, off-diagonal terms included. Quantization errors within a channel are correlated
  through the shared scale, which the diagonal ignores.

Methods: ``fisher-diag`` (diagonal, true labels -- the textbook empirical-Fisher formula),
``empirical-fisher`` (block, true labels), ``sampled-fisher`` (block, sampled labels) and the
default ``fisher``, which takes each layer's total from ``sampled-fisher`` and spreads it over the
layer's channels in proportion to ``fisher-diag``. Its two statistics share one backward pass:
a sample whose sampled label equals its true label has the same gradients under both, and only
the other samples (few, for a model that fits its calibration images) are run again.

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

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hawq_search.core.layers import LayerInfo
from hawq_search.data.datasets import TensorData
from hawq_search.graph.trace import ModelGraph
from hawq_search.quant.activation import act_levels
from hawq_search.quant.weight import is_quantized, mse_weight_scales, quantize_per_channel
from hawq_search.sensitivity.folding import FoldedModel, fold_batchnorms
from hawq_search.sensitivity.table import SensitivityTable

__all__ = [
    "METHODS",
    "LossFn",
    "batch_loss",
    "fisher_sensitivity",
    "layer_weight_deltas",
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


def layer_weight_deltas(
    model: nn.Module, graph: ModelGraph, bits: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """:func:`weight_deltas` of every layer of ``graph``, each on its weight's device.

    Layers with the same fan-in share one scale search per bit option (the search is per output
    channel, row by row, so stacking channels changes no value): a few dozen searches for a deep
    network instead of one per layer and bit option.
    """
    modules = dict(model.named_modules())
    weights = {
        layer.name: modules[layer.name].weight.detach().reshape(layer.out_channels, -1)
        for layer in graph.layers
    }
    by_fan_in: dict[int, list[str]] = {}
    for name, w in weights.items():
        by_fan_in.setdefault(w.shape[1], []).append(name)
    out = {}
    for names in by_fan_in.values():
        d = weight_deltas(torch.cat([weights[n].float().cpu() for n in names]), bits)
        parts = d.split([weights[n].shape[0] for n in names], dim=1)
        for n, part in zip(names, parts, strict=True):
            out[n] = part.contiguous().to(weights[n].device)
    return out


def per_sample_grads(
    layer: LayerInfo, x: torch.Tensor, gy: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-sample weight gradients ``(B, C_out, fan_in)`` (float32) of a Conv2d or Linear layer
    from its input ``x`` and output gradient ``gy``, computed in ``dtype``.

    A conv's per-sample gradients are the weight gradient of the same conv with the batch folded
    into the groups (one image of ``B * C_in`` channels, ``B * groups`` groups): one
    ``convolution_backward`` call, which runs at the speed of an ordinary weight gradient, where
    one small matmul per sample and kernel tap is several times slower on CPU.
    ``dtype=torch.bfloat16`` gives ~0.4 % relative error per entry.
    """
    b = x.shape[0]
    if layer.op == "linear":
        x2 = x.to(dtype).reshape(b, -1, x.shape[-1])
        g2 = gy.to(dtype).reshape(b, -1, gy.shape[-1])
        return torch.bmm(g2.transpose(1, 2), x2).float()
    cin, cout = x.shape[1], gy.shape[1]
    xi = x.to(dtype).reshape(1, b * cin, *x.shape[2:])
    gi = gy.to(dtype).reshape(1, b * cout, *gy.shape[2:])
    w = xi.new_empty(b * cout, cin // layer.groups, *layer.kernel_size)
    gw = torch.ops.aten.convolution_backward(
        gi, xi, w, None, layer.stride, layer.padding, layer.dilation, False, (0, 0),
        b * layer.groups, (False, True, False),
    )[1]  # fmt: skip
    return gw.reshape(b, cout, -1).float()


# Samples per per_sample_grads call: a chunk's gradients, inputs and output gradients stay
# within about 2 MB (float32) per thread, so they are still in cache when squared and
# contracted, and there are few enough chunks for each op to be worth splitting over threads.
# Measured on ResNet-56 (2-core EPYC, one thread): chunks of 8-11 samples run the 64-channel
# 8x8 layers 1.5x faster than chunks of 32 and 2x faster than the whole batch of 128; the 16-
# and 32-channel layers are flat between 8 and 64.
_CHUNK_ELEMENTS = 1 << 19
_MAX_CHUNK = 32


def _chunk(layer: LayerInfo) -> int:
    threads = max(1, torch.get_num_threads())
    per_sample = layer.params + int(np.prod(layer.input_shape)) + int(np.prod(layer.output_shape))
    return max(1, min(_MAX_CHUNK * threads, _CHUNK_ELEMENTS * threads // per_sample))


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
            if not out.requires_grad:  # nothing upstream needs a gradient: start the graph here
                out.requires_grad_(True)
            self.outputs[name] = out
            return out

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass(frozen=True)
class _Pass:
    """One set of labels and the statistics its gradients feed (passes after the first reuse
    the first one's backward for every sample with the same label)."""

    labels: str  # "true" or "sampled"
    weight: tuple[str, ...]  # subset of ("block", "diag", "block_total")
    act: str | None  # "block", "diag" or None


# method -> label passes. "fisher" takes each layer's total from the sampled-label
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
    deltas = layer_weight_deltas(model, graph, w_bits)
    quantized = [i for i, b in enumerate(w_bits) if is_quantized(b)]
    folded = fold_batchnorms(model, graph)
    ctx = _Context(
        graph, METHODS[method], deltas, a_bits, act_clips, act_signed, dtype, loss_fn, quantized,
        folded,
    )  # fmt: skip
    sums = _Sums(deltas, graph.act_groups, len(a_bits), ctx.passes)
    model = folded.model  # the original, or a BatchNorm-folded copy of it
    n_total = 0
    gen = torch.Generator().manual_seed(seed)
    with _frozen_eval(model), contextlib.closing(_Recorder(model, graph)) as rec:
        for x, y in data.batches(batch_size):
            _batch(model, rec, ctx, sums, x, y, gen)
            n_total += x.shape[0]
            if progress is not None:
                progress.update(x.shape[0])
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


@contextlib.contextmanager
def _frozen_eval(model: nn.Module):
    """``model`` in eval mode with no parameter requiring grad (so autograd never forms batch
    weight gradients), restored afterwards."""
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    was_training = model.training
    for p in params:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, r in zip(params, req, strict=True):
            p.requires_grad_(r)
        model.train(was_training)


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
    quantized: list[int]  # indices of the weight bit options that perturb the weights
    folded: FoldedModel  # the model the pass runs, and how its output gradients map back

    @property
    def act_quantized(self) -> bool:
        """Whether any activation option quantizes (else activation terms are all zero and
        the layer-input gradients they need are not formed)."""
        return any(is_quantized(b) for b in self.a_bits)


# One backward pass's statistics for the samples a mask selects (None: every sample).
_Feed = tuple[_Pass, "torch.Tensor | None"]


def _batch(model, rec: _Recorder, ctx: _Context, sums: _Sums, x, y, gen) -> None:
    """Add one batch to ``sums``: one forward and one backward with the first pass's labels.

    A sample's gradients depend only on its own label (eval mode), so a later pass reuses them
    for every sample whose label is the same -- with sampled labels from a model that fits its
    calibration images, almost all of them -- and re-runs forward and backward only on the rest.
    The re-run's gradients are paired with the layer inputs of the first forward: a subset may
    take other kernels, and a last-bit change of an activation can move it across a rounding
    boundary of the activation quantizer.
    """
    device = next(iter(ctx.deltas.values())).device
    x, y = x.to(device), y.to(device)
    act = ctx.act_quantized and any(p.act for p in ctx.passes)
    logits, roots = _forward(model, rec, ctx, x, act)
    labels = [_labels(pas, logits, y, ctx.loss_fn, gen) for pas in ctx.passes]
    same = [None] + [(lab == labels[0]).float() for lab in labels[1:]]
    loss = batch_loss(ctx.loss_fn, logits, labels[0])
    inputs = dict(rec.inputs)
    feeds = list(zip(ctx.passes, same, strict=True))
    _backward(ctx, rec, loss, roots, _Consumer(ctx, inputs, feeds, sums, act))
    for pas, lab, mask in zip(ctx.passes[1:], labels[1:], same[1:], strict=True):
        rest = (mask == 0).nonzero().squeeze(1)
        if rest.numel() == 0:
            continue
        sub_act = ctx.act_quantized and pas.act is not None
        sub_logits, roots = _forward(model, rec, ctx, x[rest], sub_act)
        loss = batch_loss(ctx.loss_fn, sub_logits, lab[rest])
        sub_inputs = {name: v[rest] for name, v in inputs.items()}
        _backward(ctx, rec, loss, roots, _Consumer(ctx, sub_inputs, [(pas, None)], sums, sub_act))


def _forward(model, rec: _Recorder, ctx: _Context, x, act: bool):
    """Logits, and the tensors a backward from them must reach so that it passes every layer:
    each layer output that starts a graph of its own (nothing upstream of it needs a
    gradient), and with activation terms (``act``) the input, made to require grad for the
    first layers' input gradients. Without them the backward skips the first conv's input
    gradient."""
    if act:
        x = x.clone().requires_grad_(True)
    rec.inputs.clear(), rec.aliases.clear(), rec.outputs.clear()
    low = ctx.dtype != torch.float32
    with torch.autocast(x.device.type, dtype=ctx.dtype, enabled=low):
        logits = model(x)
    roots = [x] if act else []
    roots += [
        rec.outputs[layer.name]
        for layer in ctx.graph.layers
        if rec.outputs[layer.name].grad_fn is None
    ]
    return logits, roots


class _Consumer:
    """Turns each gradient into per-sample terms the moment backward forms it (tensor hooks),
    so it is used while still in cache and freed at once: with every layer-input gradient
    returned at the end instead, a ResNet-56 backward with activation terms ran 1.6x slower
    (2-core EPYC, AVX2 kernels), from the memory they held."""

    def __init__(self, ctx: _Context, inputs, feeds: list[_Feed], sums: _Sums, act: bool):
        self.ctx, self.inputs, self.feeds, self.sums = ctx, inputs, feeds, sums
        self.act_feeds = [(pas, mask) for pas, mask in feeds if pas.act] if act else []
        self.group_d: list[dict] = [{} for _ in self.act_feeds]  # block terms per feed

    def output_grad(self, layer: LayerInfo, gy: torch.Tensor) -> None:
        gy = self.ctx.folded.output_grad(layer.name, gy)
        _weight_terms(self.ctx, layer, self.inputs[layer.name], gy, self.feeds, self.sums)

    def input_grad(self, layer: LayerInfo, gx: torch.Tensor) -> None:
        """Activation terms of one consumer: diagonal terms add up at once; block terms add up
        per sample over a group's consumers before they are squared (:meth:`finish`)."""
        g = layer.act_group
        for k, (pas, mask) in enumerate(self.act_feeds):
            terms = _act_layer_terms(self.ctx, layer, self.inputs[layer.name], gx, pas.act)
            if pas.act == "block":
                prev = self.group_d[k].get(g)
                self.group_d[k][g] = terms if prev is None else prev + terms
            else:
                self.sums.act[g] += terms.sum(0) if mask is None else mask @ terms

    def finish(self) -> None:
        for (_pas, mask), group_d in zip(self.act_feeds, self.group_d, strict=True):
            for g, d in group_d.items():
                self.sums.act[g] += (d * d).sum(0) if mask is None else mask @ (d * d)


def _backward(ctx: _Context, rec: _Recorder, loss, roots, consumer: _Consumer) -> None:
    """One backward from ``loss`` to ``roots``, every layer's output gradient (and, for
    activation terms, its own input gradient) handed to ``consumer`` as it is formed."""
    handles = []
    try:
        for layer in ctx.graph.layers:
            out = rec.outputs[layer.name]
            handles.append(out.register_hook(partial(_hook, consumer.output_grad, layer)))
            if consumer.act_feeds:
                alias = rec.aliases[layer.name]
                handles.append(alias.register_hook(partial(_hook, consumer.input_grad, layer)))
        torch.autograd.grad(loss, roots, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    consumer.finish()


def _hook(fn, layer: LayerInfo, grad: torch.Tensor) -> None:
    fn(layer, grad)  # returns None: the gradient flows on unchanged


def _labels(pas: _Pass, logits, y, loss_fn, gen) -> torch.Tensor:
    """The pass's labels: the targets, or one label per sample drawn from the model's softmax."""
    if pas.labels != "sampled" or loss_fn is not None:
        return y
    probs = logits.detach().float().softmax(1).cpu()  # the seeded generator is on CPU
    return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(y.device)


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


def _weight_terms(ctx: _Context, layer: LayerInfo, x, gy, feeds: list[_Feed], sums) -> None:
    """Diagonal and block terms of one layer, from its per-sample gradients chunk by chunk."""
    name, q = layer.name, ctx.quantized
    deltas = ctx.deltas[name][q]  # (n_quantized_bits, C, fan_in)
    step = _chunk(layer)
    diag = any("diag" in pas.weight for pas, _ in feeds)
    block = any({"block", "block_total"} & set(pas.weight) for pas, _ in feeds)
    for s in range(0, x.shape[0], step):
        G = per_sample_grads(layer, x[s : s + step], gy[s : s + step], ctx.dtype)
        # (G_n,c . Δ_b,c)^2 of every sample, bit option and channel: (n, bits, C)
        dd = torch.einsum("nck,bck->nbc", G, deltas).square_() if block else None
        sq = G.square_() if diag else None
        for pas, mask in feeds:
            m = None if mask is None else mask[s : s + step]
            if "diag" in pas.weight:
                sums.diag[name] += sq.sum(0) if m is None else torch.einsum("n,nck->ck", m, sq)
            if {"block", "block_total"} & set(pas.weight):
                per_bit = dd.sum(0) if m is None else torch.einsum("n,nbc->bc", m, dd)
                if "block" in pas.weight:
                    sums.block[name][q] += per_bit
                if "block_total" in pas.weight:
                    sums.block_total[name][q] += per_bit.sum(1)


def _act_layer_terms(ctx: _Context, layer: LayerInfo, xin, gx, mode: str) -> torch.Tensor:
    """(B, n_abits) per-sample ``g · err`` (block) or ``Σ (g_i err_i)²`` (diag) of one consumer."""
    xin, gx = xin.float().flatten(1), gx.float().flatten(1)
    group = layer.act_group
    terms = torch.zeros(xin.shape[0], len(ctx.a_bits), device=xin.device)
    for j, b in enumerate(ctx.a_bits):
        if b >= 16:
            continue
        err = _act_error(xin, b, ctx.act_clips[group][b], ctx.act_signed[group])
        if mode == "block":  # per-sample dot products, without forming the products
            terms[:, j] = torch.bmm(gx.unsqueeze(1), err.unsqueeze(2)).flatten()
        else:
            terms[:, j] = err.mul_(gx).square_().sum(1)
    return terms


def _act_error(x: torch.Tensor, bits: int, clip: float, signed: bool) -> torch.Tensor:
    """``quantize_activation(x, ...) - x`` by the same operations (bit-identical), in one new
    buffer instead of four."""
    qmin, qmax = act_levels(bits, signed)
    scale = max(clip, 1e-12) / qmax
    return torch.div(x, scale).round_().clamp_(qmin, qmax).mul_(scale).sub_(x)
