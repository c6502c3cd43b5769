"""Property tests of the weight (per channel) and activation (per tensor) fake quantizers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hawq_search.quant.activation import (
    ActStats,
    act_levels,
    fake_quant_activation,
    quantize_activation,
)
from hawq_search.quant.modules import ActQuantizer, mse_scales_for_bits
from hawq_search.quant.weight import (
    QUANT_BITS,
    fake_quant_per_channel,
    mse_weight_scales,
    quantize_per_channel,
    weight_qmax,
)

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None)


@st.composite
def weights_and_bits(draw, *, unquantized: bool = False):
    """A (C, K) weight with channels of very different ranges and one bit-width per channel."""
    c = draw(st.integers(1, 6))
    k = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ranges = torch.exp(torch.empty(c, 1).uniform_(-6, 3, generator=g))
    w = torch.randn(c, k, generator=g) * ranges
    if draw(st.booleans()):  # heavy-tailed outliers
        w = (
            w
            + (torch.rand(c, k, generator=g) < 0.05) * torch.randn(c, k, generator=g) * 10 * ranges
        )
    options = list(QUANT_BITS) + ([16, 32] if unquantized else [])
    bits = torch.tensor(draw(st.lists(st.sampled_from(options), min_size=c, max_size=c)))
    return w, bits


def _scales(w: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return mse_scales_for_bits(w, bits)


@SETTINGS
@given(weights_and_bits())
def test_weight_error_bound_and_grid(wb):
    w, bits = wb
    s = _scales(w, bits)
    q = quantize_per_channel(w, bits, s)
    qmax = weight_qmax(bits).unsqueeze(1).float()
    s2 = s.unsqueeze(1)
    inside = w.abs() <= qmax * s2
    err = (q - w).abs()
    bound = s2 / 2 * (1 + 1e-5) + 1e-30
    assert torch.all(err[inside] <= bound.expand_as(w)[inside])
    # Outside the clip range the value is clipped to the outermost level.
    outside = ~inside
    assert torch.allclose(q[outside].abs(), (qmax * s2).expand_as(w)[outside], rtol=1e-5, atol=0)
    # Every value lies on the grid k * s_c with |k| <= 2^(b-1) - 1.
    k = q / s2
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert torch.all(k.round().abs() <= qmax)


@SETTINGS
@given(weights_and_bits())
def test_weight_levels_per_channel_honour_bits(wb):
    w, bits = wb
    q = quantize_per_channel(w, bits, _scales(w, bits))
    for c in range(w.shape[0]):
        n_levels = torch.unique(q[c]).numel()
        assert n_levels <= 2 ** int(bits[c]) - 1


@SETTINGS
@given(weights_and_bits(unquantized=True))
def test_weight_quantization_is_idempotent(wb):
    w, bits = wb
    s = _scales(w, bits)
    q = quantize_per_channel(w, bits, s)
    assert torch.equal(quantize_per_channel(q, bits, s), q)


@SETTINGS
@given(weights_and_bits(unquantized=True))
def test_unquantized_channels_pass_through(wb):
    w, bits = wb
    q = quantize_per_channel(w, bits, _scales(w, bits))
    keep = bits >= 16
    assert torch.equal(q[keep], w[keep])
    all16 = torch.full_like(bits, 16)
    all32 = torch.full_like(bits, 32)
    ones = torch.ones(w.shape[0])
    assert torch.equal(quantize_per_channel(w, all16, ones), w)
    assert torch.equal(quantize_per_channel(w, all32, ones), w)
    assert torch.equal(fake_quant_per_channel(w, all32, ones), w)


@SETTINGS
@given(weights_and_bits(), st.sampled_from(QUANT_BITS))
def test_mse_scale_error_not_above_maxabs_scale_error(wb, b):
    w, _ = wb
    bits = torch.full((w.shape[0],), b)
    mse = mse_weight_scales(w, b)
    maxabs = w.abs().amax(1).clamp_min(1e-12) / weight_qmax(b)
    e_mse = ((quantize_per_channel(w, bits, mse) - w) ** 2).sum(1)
    e_max = ((quantize_per_channel(w, bits, maxabs) - w) ** 2).sum(1)
    assert torch.all(e_mse <= e_max * (1 + 1e-5) + 1e-30)
    assert torch.all(mse > 0) and torch.all(mse <= maxabs * (1 + 1e-6))


@SETTINGS
@given(weights_and_bits(unquantized=True))
def test_fake_quant_forward_equals_quantize_and_gradient_is_straight_through(wb):
    w, bits = wb
    s = _scales(w, bits)
    w = w.clone().requires_grad_(True)
    q = fake_quant_per_channel(w, bits, s)
    assert torch.equal(q.detach(), quantize_per_channel(w.detach(), bits, s))
    q.backward(torch.ones_like(q))
    v = (w.detach() / s.unsqueeze(1)).abs()
    qmax = weight_qmax(bits.clamp(max=16)).unsqueeze(1).float()
    quant = (bits < 16).unsqueeze(1).expand_as(w)
    # Interior of the grid (away from the outermost level): gradient passes unchanged.
    interior = quant & (v < qmax - 0.5)
    assert torch.allclose(w.grad[interior], torch.ones_like(w.grad[interior]), atol=1e-5)
    # Beyond the clip range: no gradient (clipped).
    clipped = quant & (v > qmax + 0.5)
    assert torch.all(w.grad[clipped] == 0)
    # Unquantized channels: identity.
    assert torch.all(w.grad[~quant] == 1)


def test_fake_quant_gradient_at_outermost_level_is_one():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=g)
    bits = torch.tensor([2, 3, 4, 8])
    s = mse_scales_for_bits(w, bits)
    w.requires_grad_(True)
    fake_quant_per_channel(w, bits, s).sum().backward()
    v = (w.detach() / s.unsqueeze(1)).abs()
    qmax = weight_qmax(bits).unsqueeze(1).float()
    inside = v <= qmax  # inside the clip range, including the outermost level
    assert inside.any()
    assert torch.allclose(w.grad[inside], torch.ones_like(w.grad[inside]), atol=1e-5)


def test_fake_quant_reaches_scales_lsq_style():
    w = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    bits = torch.tensor([3, 4, 8])
    s = mse_scales_for_bits(w, bits).requires_grad_(True)
    fake_quant_per_channel(w, bits, s).pow(2).sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and (s.grad != 0).any()


# ---- activations ---------------------------------------------------------------------------


@st.composite
def activations(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(1, 300))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * float(draw(st.floats(1e-3, 100)))
    return x


@SETTINGS
@given(activations(), st.sampled_from(QUANT_BITS), st.floats(1e-3, 50), st.booleans())
def test_activation_grid_clip_and_idempotence(x, bits, clip, signed):
    if not signed:
        x = x.abs()
    q = quantize_activation(x, bits, clip, signed)
    qmin, qmax = act_levels(bits, signed)
    if signed:
        assert (qmin, qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    else:
        assert (qmin, qmax) == (0, 2**bits - 1)
    s = clip / qmax
    k = q / s
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert torch.all(k.round() >= qmin) and torch.all(k.round() <= qmax)
    assert torch.unique(q).numel() <= qmax - qmin + 1
    # Clip: nothing beyond the clip value; inside it the error is at most half a step.
    assert torch.all(q.abs() <= clip * (1 + 1e-5))
    inside = (x / s >= qmin) & (x / s <= qmax)
    assert torch.all((q - x).abs()[inside] <= s / 2 * (1 + 1e-4) + 1e-12)
    assert torch.equal(quantize_activation(q, bits, clip, signed), q)
    # The differentiable version agrees in the forward pass.
    assert torch.equal(fake_quant_activation(x, bits, clip, signed), q)


def test_unsigned_grid_maps_negative_values_to_zero():
    x = torch.tensor([-3.0, -0.1, 0.0, 0.5, 1.0, 7.0])
    q = quantize_activation(x, 2, 1.0, signed=False)
    assert torch.allclose(q, torch.tensor([0.0, 0.0, 0.0, 2 / 3, 1.0, 1.0]))
    assert torch.allclose(
        quantize_activation(x, 2, 1.0, signed=True),
        torch.tensor([-1.0, 0, 0, 0, 1, 1]),  # round half to even
    )


@pytest.mark.parametrize("bits", [16, 32])
def test_activation_unquantized_passes_through(bits):
    x = torch.randn(100)
    assert torch.equal(quantize_activation(x, bits, 0.1, True), x)
    assert torch.equal(fake_quant_activation(x, bits, 0.1, False), x)
    assert torch.equal(ActQuantizer(bits, 0.1, True)(x), x)


def test_fake_quant_activation_clipped_straight_through():
    x = torch.linspace(-3, 3, 61).requires_grad_(True)
    q = fake_quant_activation(x, 4, 1.5, signed=True)
    q.backward(torch.ones_like(q))
    inside = x.detach().abs() <= 1.5
    assert torch.all(x.grad[inside] == 1)
    assert torch.all(x.grad[~inside] == 0)
    assert torch.equal(q.detach(), quantize_activation(x.detach(), 4, 1.5, True))


def test_act_quantizer_module_matches_function():
    x = torch.randn(2, 3, 4, 4).relu()
    aq = ActQuantizer(4, 1.2, signed=False)
    assert torch.equal(aq(x), quantize_activation(x, 4, float(aq.clip), False))
    assert "bits=4" in repr(aq)


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(QUANT_BITS),
    st.booleans(),
    st.integers(1, 4),
)
def test_best_clip_not_worse_than_absmax(seed, bits, relu, n_updates):
    g = torch.Generator().manual_seed(seed)
    stats = ActStats(seed=seed)
    for _ in range(n_updates):
        x = torch.randn(3, 50, generator=g) * 2
        x = x + (torch.rand(3, 50, generator=g) < 0.01) * 30  # outliers
        stats.update(x.relu() if relu else x)
    assert stats.signed == (stats.min < 0)
    if relu:
        assert not stats.signed
    clip = stats.best_clip(bits)
    assert 0 < clip <= stats.absmax * (1 + 1e-6)
    samples = torch.cat(stats.samples)

    def err(c):
        return float(((quantize_activation(samples, bits, c, stats.signed) - samples) ** 2).sum())

    assert err(clip) <= err(stats.absmax) * (1 + 1e-6) + 1e-12


def test_act_stats_sign_absmax_and_unquantized_clip():
    stats = ActStats()
    stats.update(torch.tensor([0.0, 1.0, 2.5]))
    assert not stats.signed and stats.absmax == 2.5
    stats.update(torch.tensor([-4.0]))
    assert stats.signed and stats.absmax == 4.0
    assert stats.best_clip(16) == 4.0 and stats.best_clip(32) == 4.0
    empty = ActStats()
    empty.update(torch.zeros(10))
    assert empty.best_clip(4) == 0.0


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_activation_same_values_with_and_without_autograd(bits, signed):
    x = torch.randn(4, 257) * 2
    with torch.no_grad():
        plain = fake_quant_activation(x, bits, 1.7, signed)
    tracked = fake_quant_activation(x.clone().requires_grad_(True), bits, 1.7, signed)
    assert tracked.requires_grad
    assert torch.equal(plain, tracked.detach())
