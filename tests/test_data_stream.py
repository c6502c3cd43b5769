"""Streamed (StreamData) against in-memory (TensorData) subsets: same batches, same accuracy, same
calibration statistics; and from_batches over a user's iterable of batches."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SHARED, tiny_net
from torch.utils.data import DataLoader, TensorDataset

from hawq_search.core.exceptions import UserInputError
from hawq_search.data.datasets import (
    Batches,
    StreamData,
    TensorData,
    from_batches,
    load_subset,
    subset_indices,
)
from hawq_search.evaluation import mean_loss, top1
from hawq_search.graph.trace import trace_model
from hawq_search.models.weights import Preprocess
from hawq_search.quant.bn import _moments, batchnorms, correct_bn
from hawq_search.sensitivity.calibration import collect_act_stats

PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 16, 16))
N_PER_CLASS = (5, 4, 6)  # 15 images in 3 classes: no batch size below divides it evenly
JPEG = SHARED / "data" / "cifar10-jpeg"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny ImageFolder of 16x16 PNGs (train/ and test/), distinct pixels per image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for k, n in enumerate(N_PER_CLASS):
            d = root / split / f"class{k}"
            d.mkdir(parents=True)
            for i in range(n):
                px = torch.full((16, 16, 3), 60.0 * k) + torch.rand(16, 16, 3, generator=gen) * 90
                Image.fromarray(px.clamp(0, 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


def _pair(folder, size=None, seed=0, num_workers=0):
    mem = load_subset("imagefolder", folder, "test", PRE, size, seed, num_workers=num_workers)
    stream = load_subset(
        "imagefolder", folder, "test", PRE, size, seed, in_memory=False, num_workers=num_workers
    )
    return mem, stream


def _assert_same_batches(a: Batches, b: Batches, batch_size: int) -> None:
    ba, bb = list(a.batches(batch_size)), list(b.batches(batch_size))
    assert len(ba) == len(bb) == -(-len(a) // batch_size)
    for (xa, ya), (xb, yb) in zip(ba, bb, strict=True):
        assert xa.dtype == xb.dtype == torch.float32
        assert ya.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("size", [None, 0, 9])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_stream_and_memory_give_identical_batches(folder, size, batch_size):
    mem, stream = _pair(folder, size, seed=3)
    assert isinstance(mem, TensorData) and isinstance(stream, StreamData)
    assert isinstance(mem, Batches) and isinstance(stream, Batches)
    n = 9 if size else sum(N_PER_CLASS)
    assert len(mem) == len(stream) == n
    assert mem.indices == stream.indices == subset_indices(sum(N_PER_CLASS), size, 3)
    assert mem.source == stream.source == "imagefolder:test"
    _assert_same_batches(mem, stream, batch_size)
    # A second pass over the stream reads the same images again.
    _assert_same_batches(stream, stream, batch_size)


def test_seeded_subset_depends_on_seed_not_on_mode(folder):
    a, b = _pair(folder, 9, seed=0)[1], _pair(folder, 9, seed=1)[1]
    assert a.indices != b.indices and len(a) == len(b) == 9
    assert a.indices == sorted(a.indices)


def test_two_workers_give_the_same_batches(folder):
    mem0, _ = _pair(folder, 11, seed=2)
    mem2, stream2 = _pair(folder, 11, seed=2, num_workers=2)
    assert stream2.num_workers == 2
    _assert_same_batches(mem0, mem2, 3)
    _assert_same_batches(mem0, stream2, 3)


def test_stream_stops_its_workers_when_the_caller_stops_early(folder):
    _, stream = _pair(folder, num_workers=2)
    it = stream.batches(2)
    x, y = next(it)
    assert len(x) == 2
    it.close()  # the generator's finally shuts the workers down; must not hang or raise
    assert sum(len(y) for _, y in stream.batches(4)) == len(stream)


def test_negative_num_workers_is_a_user_error(folder):
    with pytest.raises(UserInputError, match="num_workers"):
        load_subset("imagefolder", folder, "test", PRE, None, 0, in_memory=False, num_workers=-1)


def test_top1_and_mean_loss_agree_between_modes(folder):
    mem, stream = _pair(folder, seed=0)
    model = tiny_net(num_classes=3)
    for bs in (4, 250):
        assert top1(model, stream, batch_size=bs) == top1(model, mem, batch_size=bs)
        assert mean_loss(model, stream, batch_size=bs) == mean_loss(model, mem, batch_size=bs)


def _perturbed(model):
    q = copy.deepcopy(model)
    with torch.no_grad():
        for p in q.parameters():
            if p.dim() > 1:
                p.copy_(torch.round(p * 4) / 4)  # a crude "quantization" that shifts activations
    return q


@pytest.mark.parametrize("num_workers", [0, 2])
def test_correct_bn_same_statistics_in_both_modes(folder, num_workers):
    mem, _ = _pair(folder, seed=0)
    _, stream = _pair(folder, seed=0, num_workers=num_workers)
    fp = tiny_net(num_classes=3)
    q_mem = correct_bn(_perturbed(fp), fp, mem, batch_size=4)
    q_stream = correct_bn(_perturbed(fp), fp, stream, batch_size=4)
    bn_mem, bn_stream = batchnorms(q_mem), batchnorms(q_stream)
    untouched = batchnorms(fp)
    for name, bn in bn_mem.items():
        assert torch.equal(bn.running_mean, bn_stream[name].running_mean)
        assert torch.equal(bn.running_var, bn_stream[name].running_var)
        assert not torch.equal(bn.running_mean, untouched[name].running_mean)


class _LyingLength:
    """Batches whose len() disagrees with what it yields (a stream whose dataset shrank)."""

    def __init__(self, inner: TensorData, claimed: int) -> None:
        self.inner, self.claimed = inner, claimed
        self.indices, self.source = inner.indices, inner.source

    def __len__(self) -> int:
        return self.claimed

    def batches(self, batch_size):
        return self.inner.batches(batch_size)


def test_bn_moments_count_the_batches_actually_seen(folder):
    mem, _ = _pair(folder, seed=0)
    model = tiny_net(num_classes=3)
    lying = _LyingLength(mem, claimed=1000)
    assert isinstance(lying, Batches)
    want, got = _moments(model, mem, 4), _moments(model, lying, 4)
    for name, (m, v) in want.items():
        assert torch.equal(m, got[name][0]) and torch.equal(v, got[name][1])
    # top1 divides by the samples seen, too
    assert top1(model, lying, batch_size=4) == top1(model, mem, batch_size=4)


def test_collect_act_stats_same_in_both_modes(folder):
    mem, stream = _pair(folder, seed=0)
    model = tiny_net(num_classes=3)
    graph = trace_model(model, torch.zeros(1, 3, 16, 16))
    a = collect_act_stats(model, graph, mem, batch_size=4)
    b = collect_act_stats(model, graph, stream, batch_size=4)
    assert set(a) == set(b)
    for g in a:
        assert (a[g].min, a[g].absmax) == (b[g].min, b[g].absmax)
        assert torch.equal(torch.cat(a[g].samples), torch.cat(b[g].samples))


# ---- from_batches -------------------------------------------------------------------------


def _loader(n=10, batch_size=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g, dtype=torch.int32)
    return x, y, DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("limit, n", [(6, 6), (4, 4), (1, 1), (None, 10), (0, 10), (100, 10)])
def test_from_batches_takes_the_first_limit_samples(limit, n):
    x, y, loader = _loader()
    data = from_batches(loader, limit, source="mine")
    assert isinstance(data, TensorData) and isinstance(data, Batches)
    assert len(data) == n and data.indices == list(range(n)) and data.source == "mine"
    assert torch.equal(data.images, x[:n])
    assert torch.equal(data.labels, y[:n].long()) and data.labels.dtype == torch.int64


def test_from_batches_stops_reading_at_the_limit():
    x, y, loader = _loader(n=40, batch_size=4)
    seen = []

    def batches():
        for k, b in enumerate(loader):
            seen.append(k)
            yield b

    assert len(from_batches(batches(), 6)) == 6
    assert seen == [0, 1]


@pytest.mark.parametrize(
    "batches, match",
    [
        ([], "no samples"),
        (iter(()), "no samples"),
        ([torch.zeros(2, 3)], "pair"),
        ([(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))], "pair"),
        ([(torch.zeros(2, 3), [0, 1])], "pair"),
        ([{"x": torch.zeros(2, 3), "y": torch.zeros(2)}], "pair"),
        ([(torch.zeros(2, 3), torch.zeros(3))], "first"),
        ([(torch.zeros(2, 3, 4), torch.zeros(2)), (torch.zeros(2, 3, 5), torch.zeros(2))], "shape"),
    ],
)
def test_from_batches_rejects_bad_input(batches, match):
    with pytest.raises(UserInputError, match=match) as exc:
        from_batches(batches, None)
    assert "\n" not in str(exc.value)


def test_from_batches_rejects_a_negative_limit():
    with pytest.raises(UserInputError, match="limit"):
        from_batches(_loader()[2], -1)


# ---- real data ----------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.skipif(
    not (JPEG / "test").is_dir(), reason=f"cifar10-jpeg not found under {SHARED / 'data'}"
)
def test_stream_over_the_jpeg_test_split_has_10000_images():
    from hawq_search.models.weights import CIFAR10_MEAN, CIFAR10_STD

    pre = Preprocess(mean=CIFAR10_MEAN, std=CIFAR10_STD)
    data = load_subset("imagefolder", JPEG, "test", pre, 0, 0, in_memory=False)
    assert isinstance(data, StreamData) and len(data) == 10000
    assert data.indices == list(range(10000))
    x, y = next(data.batches(8))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.parametrize("n", [50, 1000])
def test_heldout_indices_follow_the_calibration_ones_and_never_overlap(n):
    from hawq_search.data.datasets import subset_indices

    calib = subset_indices(n, 20, seed=3)
    held = subset_indices(n, 25, seed=3, skip=20)
    assert len(calib) == 20 and len(held) == 25 and not set(calib) & set(held)
    assert set(subset_indices(n, 45, seed=3)) == set(calib) | set(held)  # the same permutation
    assert set(subset_indices(n, 0, seed=3, skip=20)).isdisjoint(calib)  # the whole rest
    with pytest.raises(UserInputError, match="no images left"):
        subset_indices(n, 5, seed=3, skip=n)


def test_correct_bn_with_precomputed_float_moments_is_identical(folder):
    from hawq_search.quant.bn import batch_moments

    mem, _ = _pair(folder, seed=0)
    fp = tiny_net(num_classes=3)
    plain = correct_bn(_perturbed(fp), fp, mem, batch_size=4)
    moments = batch_moments(fp, mem, batch_size=4)
    reused = correct_bn(_perturbed(fp), fp, mem, batch_size=4, float_moments=moments)
    for name, bn in batchnorms(plain).items():
        assert torch.equal(bn.running_mean, batchnorms(reused)[name].running_mean)
        assert torch.equal(bn.running_var, batchnorms(reused)[name].running_var)


def test_pipeline_computes_the_float_moments_once_for_all_plans(tmp_path, monkeypatch):
    from conftest import tiny_session

    from hawq_search import pipeline as pipeline_mod

    calls = []
    real = pipeline_mod.batch_moments
    monkeypatch.setattr(
        pipeline_mod, "batch_moments", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    pipe = tiny_session(tmp_path, budget_mb=0.001)
    uniform = pipe.uniform_plan()
    first = pipe.quantized_model(uniform)
    again = pipe.variant(budget_mb=None).quantized_model(uniform)
    assert len(calls) == 1
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(first.eval()(x), again.eval()(x))
