"""Per-sample gradients against autograd, Fisher / Hessian sensitivity tables, the table file
format and the Pipeline's sensitivity cache."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import synthetic_data, tiny_net
from scipy.stats import spearmanr
from torch import nn

from hawq_search.config import RunConfig
from hawq_search.core.exceptions import UnsupportedLayerError
from hawq_search.graph.trace import trace_model
from hawq_search.models.registry import LoadedModel
from hawq_search.models.weights import Preprocess
from hawq_search.pipeline import Pipeline
from hawq_search.quant.activation import quantize_activation
from hawq_search.quant.weight import quantize_per_channel
from hawq_search.sensitivity import (
    SensitivityTable,
    act_clips,
    collect_act_stats,
    fisher_sensitivity,
    hessian_sensitivity,
    per_sample_grads,
    weight_deltas,
)
from hawq_search.sensitivity.fisher import layer_weight_deltas

W_BITS = (2, 3, 4, 8, 16)
A_BITS = (4, 8, 32)


def _autograd_per_sample(layer_module: nn.Module, x: torch.Tensor, gy: torch.Tensor):
    out = []
    for n in range(x.shape[0]):
        y = layer_module(x[n : n + 1])
        (g,) = torch.autograd.grad(y, layer_module.weight, gy[n : n + 1])
        out.append(g.reshape(g.shape[0], -1))
    return torch.stack(out)


CONVS = {
    "3x3": dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
    "stride2": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "stride2-odd": dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=0),
    "groups": dict(in_channels=6, out_channels=9, kernel_size=3, padding=1, groups=3),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    "depthwise-mult": dict(in_channels=4, out_channels=8, kernel_size=5, padding=2, groups=4),
    "1x1": dict(in_channels=7, out_channels=3, kernel_size=1),
    "1x1-stride2": dict(in_channels=4, out_channels=3, kernel_size=1, stride=2),
    "nonsquare": dict(in_channels=3, out_channels=4, kernel_size=(3, 1), padding=(1, 0)),
    "nonsquare-stride": dict(
        in_channels=3, out_channels=4, kernel_size=(1, 5), stride=(2, 1), padding=(0, 2)
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONVS))
def test_per_sample_grads_conv_equals_autograd(name, dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONVS[name], bias=True)
    h, w = 9, 11
    layer = trace_model(nn.Sequential(conv), torch.zeros(1, conv.in_channels, h, w)).layers[0]
    x = torch.randn(4, conv.in_channels, h, w)
    gy = torch.randn(4, *layer.output_shape)
    got = per_sample_grads(layer, x, gy, dtype)
    ref = _autograd_per_sample(conv, x, gy)
    assert got.shape == (4, conv.out_channels, conv.weight[0].numel())
    assert got.dtype == torch.float32
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(got, ref, atol=tol * ref.abs().max(), rtol=tol)


@pytest.mark.parametrize("shape", [(5,), (3, 5)])
def test_per_sample_grads_linear_equals_autograd(shape):
    torch.manual_seed(1)
    lin = nn.Linear(5, 7)
    layer = trace_model(nn.Sequential(lin), torch.zeros(1, *shape)).layers[0]
    x = torch.randn(4, *shape)
    gy = torch.randn(4, *shape[:-1], 7)
    got = per_sample_grads(layer, x, gy)
    ref = _autograd_per_sample(lin, x, gy)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [dict(dilation=2, padding=2), dict(padding="same"), dict(padding=1, dilation=(1, 2), stride=2)],
    ids=["dilation", "same", "mixed-dilation-stride"],
)
def test_per_sample_grads_unusual_convs(kw):
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, **kw)
    layer = trace_model(nn.Sequential(conv), torch.zeros(1, 3, 8, 8)).layers[0]
    x = torch.randn(2, 3, 8, 8)
    gy = torch.randn(2, *layer.output_shape)
    assert torch.allclose(
        per_sample_grads(layer, x, gy), _autograd_per_sample(conv, x, gy), atol=1e-4
    )


def test_non_zero_padding_modes_are_rejected_at_trace_time():
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(UnsupportedLayerError, match="reflect"):
        trace_model(nn.Sequential(conv), torch.zeros(1, 3, 8, 8))


def test_weight_deltas():
    w = torch.randn(6, 2, 3, 3)
    d = weight_deltas(w, (2, 8, 16, 32))
    assert d.shape == (4, 6, 18)
    assert torch.all(d[2] == 0) and torch.all(d[3] == 0)
    assert (d[0] ** 2).sum() > (d[1] ** 2).sum() > 0
    s = torch.ones(6)
    assert not torch.equal(quantize_per_channel(w.reshape(6, -1), torch.full((6,), 2), s), w)


# ---- Fisher tables ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    model = tiny_net()
    data = synthetic_data(64)
    graph = trace_model(model, torch.zeros(1, 3, 16, 16))
    stats = collect_act_stats(model, graph, data)
    clips = act_clips(stats, tuple(b for b in A_BITS if b < 16))
    signed = {g: s.signed for g, s in stats.items()}
    return model, graph, data, clips, signed


def _table(setup, method="fisher", fast=True, seed=0):  # fast: bf16 autocast
    model, graph, data, clips, signed = setup
    return fisher_sensitivity(
        model, graph, data, W_BITS, A_BITS, clips, signed,
        method=method, batch_size=32, precision="bf16" if fast else "fp32", seed=seed,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tables(setup):
    return {
        m: _table(setup, m) for m in ("fisher", "empirical-fisher", "fisher-diag", "sampled-fisher")
    }


def test_collect_act_stats_groups_and_signs(setup):
    _, graph, _, clips, signed = setup
    assert set(clips) == set(graph.act_groups)
    first = graph.layers[0].act_group
    assert signed[first]  # the normalised image is signed
    assert not signed[graph.by_name["dw"].act_group]  # a ReLU output
    for per_bits in clips.values():
        assert set(per_bits) == {4, 8} and all(v > 0 for v in per_bits.values())


@pytest.mark.parametrize("method", ["fisher", "empirical-fisher", "fisher-diag", "sampled-fisher"])
def test_fisher_table_shape_sign_and_unquantized_zero(setup, tables, method):
    _, graph, data, _, _ = setup
    t = tables[method]
    assert t.method == method and t.w_bits == W_BITS and t.a_bits == A_BITS
    assert t.meta["samples"] == len(data)
    assert set(t.weight) == {layer.name for layer in graph.layers}
    assert set(t.act) == set(graph.act_groups)
    for layer in graph.layers:
        w = t.weight[layer.name]
        assert w.shape == (layer.out_channels, len(W_BITS))
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        assert np.all(w[:, W_BITS.index(16)] == 0)
        assert w[:, 0].sum() > 0
    for a in t.act.values():
        assert a.shape == (len(A_BITS),)
        assert np.all(np.isfinite(a)) and np.all(a >= 0)
        assert a[A_BITS.index(32)] == 0 and a[0] > a[1] > 0


@pytest.mark.parametrize("method", ["fisher", "empirical-fisher", "fisher-diag", "sampled-fisher"])
def test_fisher_loss_decreases_with_bits(setup, tables, method):
    _, graph, _, _, _ = setup
    t = tables[method]
    quant = [i for i, b in enumerate(W_BITS) if b < 16]
    totals = sum(t.layer_loss(layer.name) for layer in graph.layers)
    assert np.all(np.diff(totals[quant]) <= 0)
    for layer in graph.layers:
        loss = t.layer_loss(layer.name)[quant]
        # The fewest bits cost most and the most bits cost least in every layer; in between
        # the estimate may wobble for a few-weight channel (a depthwise 3x3 has 9).
        assert loss[0] == loss.max() and loss[-1] == loss.min()
        assert loss[0] > loss[-1]
    # Averaged over layers, each extra bit lowers the normalised loss.
    norm = np.mean(
        [t.layer_loss(layer.name)[quant] / t.layer_loss(layer.name)[0] for layer in graph.layers],
        axis=0,
    )
    assert np.all(np.diff(norm) < 0)


def test_fast_bf16_agrees_with_float32(setup, tables):
    fast = tables["fisher"]
    exact = _table(setup, "fisher", fast=False)
    assert fast.meta["precision"] == "bf16" and exact.meta["precision"] == "fp32"
    quant = [i for i, b in enumerate(W_BITS) if b < 16]
    a = np.concatenate([fast.weight[k][:, quant].ravel() for k in sorted(fast.weight)])
    b = np.concatenate([exact.weight[k][:, quant].ravel() for k in sorted(exact.weight)])
    assert spearmanr(a, b).correlation > 0.95
    assert np.allclose(a.sum(), b.sum(), rtol=0.05)


def test_fisher_layer_totals_equal_sampled_fisher_totals(setup, tables):
    _, graph, _, _, _ = setup
    f, s = tables["fisher"], tables["sampled-fisher"]
    for layer in graph.layers:
        assert np.allclose(f.layer_loss(layer.name), s.layer_loss(layer.name), rtol=1e-4, atol=0)
        # ...but distributed over channels like the diagonal estimate.
        assert not np.allclose(f.weight[layer.name], s.weight[layer.name])
    for g in graph.act_groups:
        assert np.allclose(f.act[g], s.act[g], rtol=1e-6)


def test_sampled_labels_depend_on_the_seed(setup, tables):
    other = _table(setup, "sampled-fisher", seed=1)
    ref = tables["sampled-fisher"]
    assert not np.allclose(other.weight["fc"], ref.weight["fc"])
    again = _table(setup, "sampled-fisher", seed=0)
    assert all(np.array_equal(again.weight[k], ref.weight[k]) for k in ref.weight)


def test_fisher_leaves_model_untouched(setup):
    model, *_ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    req = [p.requires_grad for p in model.parameters()]
    model.train()
    _table(setup, "fisher-diag")
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_unknown_method(setup):
    with pytest.raises(ValueError, match="method must be one of"):
        _table(setup, "kfac")


def test_hessian_sensitivity_on_tinynet(setup, tables):
    model, graph, data, _, _ = setup
    t = hessian_sensitivity(
        model, graph, data, W_BITS, A_BITS, act_table=tables["fisher"], max_probes=3,
        batch_size=32, seed=0,
    )  # fmt: skip
    assert t.method == "hessian" and t.meta["probes"] == 3
    assert set(t.meta["traces"]) == {layer.name for layer in graph.layers}
    for layer in graph.layers:
        w = t.weight[layer.name]
        assert w.shape == (layer.out_channels, len(W_BITS))
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        assert np.all(w[:, W_BITS.index(16)] == 0)
    assert all(np.array_equal(t.act[g], tables["fisher"].act[g]) for g in graph.act_groups)
    no_act = hessian_sensitivity(model, graph, data, W_BITS, A_BITS, max_probes=1, batch_size=16)
    assert all(np.all(v == 0) for v in no_act.act.values())


def test_table_save_load_round_trip(tables, tmp_path):
    t = tables["fisher"]
    t.meta["note"] = "x"
    path = tmp_path / "t.npz"
    t.save(path)
    u = SensitivityTable.load(path)
    assert (u.method, u.w_bits, u.a_bits) == (t.method, t.w_bits, t.a_bits)
    assert u.meta == t.meta
    assert set(u.weight) == set(t.weight) and set(u.act) == set(t.act)
    assert all(np.array_equal(u.weight[k], t.weight[k]) for k in t.weight)
    assert all(np.array_equal(u.act[k], t.act[k]) for k in t.act)
    assert np.array_equal(u.layer_loss("fc"), t.layer_loss("fc"))
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]


# ---- Pipeline cache ------------------------------------------------------------------------


def _session(out, **kw) -> Pipeline:
    config = RunConfig(model="tests:tiny", out=str(out), wbits=(2, 4, 8), abits=(8,),
                       batch_size=32, progress=False, **kw)  # fmt: skip
    pre = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 16, 16))
    model = LoadedModel(tiny_net(), "tests:tiny", pre, 10, None, None)
    return Pipeline(config, model=model, calib=synthetic_data(48))


def test_session_caches_sensitivity(tmp_path):
    first = _session(tmp_path).sensitivity()
    assert not first.meta.get("cached")
    files = list(tmp_path.glob("sensitivity-fisher-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = _session(tmp_path).sensitivity()
    assert second.meta["cached"] is True
    assert all(np.array_equal(first.weight[k], second.weight[k]) for k in first.weight)
    assert files[0].stat().st_mtime_ns == mtime
    # A different method, seed or bit set gets its own entry.
    _session(tmp_path).sensitivity("fisher-diag")
    s3 = _session(tmp_path)
    s3.config.wbits = (2, 8)
    assert not s3.sensitivity().meta.get("cached")
    assert len(list(tmp_path.glob("sensitivity-*.npz"))) == 3


def test_session_hessian_reuses_fisher_for_activations(tmp_path):
    s = _session(tmp_path, hessian_probes=2)
    t = s.sensitivity("hessian")
    assert t.method == "hessian"
    assert len(list(tmp_path.glob("sensitivity-fisher-*.npz"))) == 1
    fisher = _session(tmp_path, hessian_probes=2).sensitivity("fisher")
    assert fisher.meta["cached"]
    assert all(np.array_equal(t.act[g], fisher.act[g]) for g in t.act)


# ---- fast paths against straightforward per-sample gradients -------------------------------


class OddNet(nn.Module):
    """Convs the fast paths must get right beyond TinyNet's: dilated, unpadded stride-2,
    non-square kernels, a depthwise conv with a channel multiplier, a 1x1 stride-2 conv, and a
    Linear over a (tokens, features) input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=2, dilation=2)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=0, bias=False)
        self.c3 = nn.Conv2d(8, 8, (3, 1), padding=(1, 0), dilation=(1, 1), groups=2)
        self.dw = nn.Conv2d(8, 16, 5, padding=2, groups=8, bias=False)
        self.c4 = nn.Conv2d(16, 6, 1, stride=2)
        self.tok = nn.Linear(6, 5)
        self.fc = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.tanh(self.c2(x))
        x = torch.relu(self.c3(x))
        x = torch.relu(self.dw(x))
        x = self.c4(x)
        t = nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # (B, 4, 6)
        return self.fc(torch.relu(self.tok(t)).flatten(1))


class TwoStemNet(nn.Module):
    """Two first layers reading the image, concatenated into one conv's input: without
    activation terms each first layer's output starts a backward graph of its own, and the
    backward must still reach both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2, bias=False)
        self.mix = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], 1)
        x = torch.relu(self.mix(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _reference_terms(model, graph, data, w_bits, a_bits, clips, signed, batch, labels_for):
    """Per-sample weight gradients and per-consumer input gradients by one autograd call per
    sample (weights requiring grad, no per_sample_grads), and from them the sums every method
    needs: {labels kind: (diag, block, act_block, act_diag)} before the 0.5/n scaling."""
    modules = dict(model.named_modules())
    weights = [modules[layer.name].weight for layer in graph.layers]
    deltas = [weight_deltas(w, w_bits) for w in weights]
    for w in weights:
        w.requires_grad_(True)
    inputs, aliases = {}, {}

    def pre(name):
        def hook(_m, args):
            inputs[name] = args[0].detach()
            aliases[name] = args[0].view_as(args[0])
            return (aliases[name],)

        return hook

    handles = [
        modules[layer.name].register_forward_pre_hook(pre(layer.name)) for layer in graph.layers
    ]
    out = {}
    gen = torch.Generator().manual_seed(0)
    try:
        for x, y in data.batches(batch):
            logits = model(x.clone().requires_grad_(True))
            labels = labels_for(logits, y, gen)
            for kind, lab in labels.items():
                acc = out.setdefault(kind, _RefSums(graph, deltas, len(a_bits)))
                for n in range(x.shape[0]):
                    loss = nn.functional.cross_entropy(logits[n : n + 1], lab[n : n + 1])
                    wanted = weights + [aliases[layer.name] for layer in graph.layers]
                    grads = torch.autograd.grad(loss, wanted, retain_graph=True)
                    acc.add(graph, grads, inputs, n, a_bits, clips, signed)
    finally:
        for h in handles:
            h.remove()
        for w in weights:
            w.requires_grad_(False)
    return out, deltas


class _RefSums:
    def __init__(self, graph, deltas, n_abits):
        self.diag = [torch.zeros(d.shape[1:]) for d in deltas]
        self.block = [torch.zeros(d.shape[:2]) for d in deltas]
        self.act_block = {g: torch.zeros(n_abits) for g in graph.act_groups}
        self.act_diag = {g: torch.zeros(n_abits) for g in graph.act_groups}
        self.deltas = deltas

    def add(self, graph, grads, inputs, n, a_bits, clips, signed):
        n_layers = len(graph.layers)
        for i in range(n_layers):
            G = grads[i].reshape(grads[i].shape[0], -1)
            self.diag[i] += G * G
            self.block[i] += torch.einsum("ck,bck->bc", G, self.deltas[i]) ** 2
        per_group = {g: torch.zeros(len(a_bits)) for g in graph.act_groups}
        for layer, gx in zip(graph.layers, grads[n_layers:], strict=True):
            g, xin = layer.act_group, inputs[layer.name][n]
            for j, b in enumerate(a_bits):
                if b < 16:
                    err = quantize_activation(xin, b, clips[g][b], signed[g]) - xin
                    per_group[g][j] += (gx[n] * err).sum()
                    self.act_diag[g][j] += ((gx[n] * err) ** 2).sum()
        for g, v in per_group.items():
            self.act_block[g] += v * v


def _expected(method, ref, deltas, graph, n):
    """Expected table (weight {layer: (C, bits)}, act {group: (bits,)}) of ``method``."""
    true, sampled = ref["true"], ref.get("sampled")
    weight, act = {}, {}
    for i, layer in enumerate(graph.layers):
        d = deltas[i]
        diag = 0.5 * torch.einsum("ck,bck->bc", true.diag[i] / n, d * d)
        if method == "fisher-diag":
            est = diag
        elif method == "empirical-fisher":
            est = 0.5 * true.block[i] / n
        elif method == "sampled-fisher":
            est = 0.5 * sampled.block[i] / n
        else:
            total = 0.5 * sampled.block[i].sum(1, keepdim=True) / n
            share = diag.sum(1, keepdim=True)
            est = torch.where(share > 0, diag * total / share.clamp_min(1e-30), 0.0)
        weight[layer.name] = est.T.double().numpy()
    src = {"fisher-diag": true.act_diag, "empirical-fisher": true.act_block}.get(
        method, sampled.act_block if sampled is not None else None
    )
    for g in graph.act_groups:
        act[g] = (0.5 * src[g] / n).double().numpy()
    return weight, act


def _sampled_labels(logits, y, gen):
    probs = logits.detach().float().softmax(1)
    return {"true": y, "sampled": torch.multinomial(probs, 1, generator=gen).squeeze(1)}


def _assert_same(got, want, what):
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        scale = np.abs(b).max()
        assert np.allclose(a, b, rtol=1e-4, atol=1e-7 * scale + 1e-30), (what, k, a, b)


@functools.cache
def _reference_case(net: str):
    """Model, graph, data, clips and the straightforward sums of one test network (cached: the
    reference does not depend on the method)."""
    if net == "stems":
        torch.manual_seed(2)
        model = TwoStemNet().eval()
    else:
        model = tiny_net() if net == "tiny" else _odd_net()
    _randomize_batchnorms(model)  # so that folding them into the convs (fisher) is tested
    data = synthetic_data(40, seed=3)
    graph = trace_model(model, torch.zeros(1, 3, 16, 16))
    stats = collect_act_stats(model, graph, data)
    clips = act_clips(stats, (4, 8))
    signed = {g: s.signed for g, s in stats.items()}
    ref = _reference_terms(model, graph, data, W_BITS, A_BITS, clips, signed, 16, _sampled_labels)
    return model, graph, data, clips, signed, ref


@pytest.mark.parametrize("net", ["tiny", "odd", "stems"])
@pytest.mark.parametrize("method", ["fisher", "empirical-fisher", "fisher-diag", "sampled-fisher"])
@pytest.mark.parametrize("max_chunk", [32, 5])
def test_fast_paths_equal_straightforward_per_sample_gradients(net, method, max_chunk, monkeypatch):
    from hawq_search.sensitivity import fisher as fisher_mod

    monkeypatch.setattr(fisher_mod, "_MAX_CHUNK", max_chunk)  # several chunks per batch too
    if max_chunk < 16:  # and several activation chunks
        monkeypatch.setattr(fisher_mod, "_CHUNK_ELEMENTS", 1500)
    model, graph, data, clips, signed, (ref, deltas) = _reference_case(net)
    t = fisher_sensitivity(
        model, graph, data, W_BITS, A_BITS, clips, signed, method=method, batch_size=16,
        precision="fp32", seed=0,
    )  # fmt: skip
    weight, act = _expected(method, ref, deltas, graph, len(data))
    _assert_same(t.weight, weight, "weight")
    _assert_same(t.act, act, "act")


def _randomize_batchnorms(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.1)
                m.weight.copy_(torch.randn(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen))


def test_batchnorms_fold_into_the_convs_they_follow():
    """A BatchNorm that is the sole reader of a conv's output folds into it; the folded copy
    computes the same logits, and the original model is untouched."""
    from hawq_search.sensitivity.folding import fold_batchnorms

    model = tiny_net()
    _randomize_batchnorms(model)
    graph = trace_model(model, torch.zeros(1, 3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorms(model, graph)
    assert sorted(folded.scales) == ["conv1", "conv2", "dw"]  # side has no BatchNorm
    assert folded.model is not model
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded.model(x), model(x), atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _odd_net() -> OddNet:
    torch.manual_seed(0)
    return OddNet().eval()


def test_fisher_with_a_user_loss_shares_the_single_backward():
    """With a user loss the sampled-label pass uses the targets: every sample's gradients are
    shared between the two statistics, and the table still equals the reference."""
    model, graph, data, clips, signed, (ref, deltas) = _reference_case("tiny")

    def ce(out, y):
        return nn.functional.cross_entropy(out, y, reduction="none")

    t = fisher_sensitivity(
        model, graph, data, W_BITS, A_BITS, clips, signed, method="fisher", batch_size=16,
        loss_fn=ce,
    )  # fmt: skip
    both_true = {"true": ref["true"], "sampled": ref["true"]}
    weight, act = _expected("fisher", both_true, deltas, graph, len(data))
    _assert_same(t.weight, weight, "weight")
    _assert_same(t.act, act, "act")


def test_layer_weight_deltas_equal_per_layer_weight_deltas():
    for model, size in ((tiny_net(), 16), (_odd_net(), 16)):
        graph = trace_model(model, torch.zeros(1, 3, size, size))
        modules = dict(model.named_modules())
        fast = layer_weight_deltas(model, graph, (2, 3, 4, 8, 16))
        for layer in graph.layers:
            want = weight_deltas(modules[layer.name].weight, (2, 3, 4, 8, 16))
            assert torch.equal(fast[layer.name], want), layer.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_sample_grads_of_a_batch_slice_equal_autograd(dtype):
    """The grouped-convolution formulation on a non-contiguous-looking slice of a batch."""
    torch.manual_seed(4)
    conv = nn.Conv2d(6, 4, 3, stride=2, padding=1, dilation=2, groups=2)
    layer = trace_model(nn.Sequential(conv), torch.zeros(1, 6, 12, 12)).layers[0]
    x = torch.randn(10, 6, 12, 12)
    gy = torch.randn(10, *layer.output_shape)
    got = per_sample_grads(layer, x[3:8], gy[3:8], dtype)
    ref = _autograd_per_sample(conv, x[3:8], gy[3:8])
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(got, ref, atol=tol * ref.abs().max(), rtol=tol)


@pytest.mark.parametrize("method", ["fisher", "fisher-diag", "empirical-fisher"])
@pytest.mark.parametrize("net", ["tiny", "stems"])
def test_weights_only_tables_equal_the_weight_part_of_full_tables(method, net):
    """With no quantized activation option the pass forms no layer-input gradients (and not the
    model input's): weight sensitivities are unchanged, activation terms are zero."""
    model, graph, data, clips, signed, _ref = _reference_case(net)
    kw = dict(method=method, batch_size=16, precision="fp32", seed=0)
    full = fisher_sensitivity(model, graph, data, W_BITS, A_BITS, clips, signed, **kw)
    only = fisher_sensitivity(model, graph, data, W_BITS, (16, 32), clips, signed, **kw)
    _assert_same(only.weight, full.weight, "weight")
    assert all(not np.any(v) for v in only.act.values())


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_error_equals_quantize_minus_input(bits, signed):
    from hawq_search.sensitivity.fisher import _act_error

    x = torch.randn(5, 300) * 3
    if not signed:
        x = x.relu()
    want = quantize_activation(x, bits, 2.5, signed) - x
    assert torch.equal(_act_error(x, bits, 2.5, signed), want)
