"""The fused LSQ activation quantizer: compiled and eager kernels agree with the formula, and
a machine without a working compiler falls back to eager code with one warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from hawq_search.training import fused_lsq
from hawq_search.training.fused_lsq import lsq_act_quantize


@pytest.fixture
def mode(request, monkeypatch):
    monkeypatch.setenv("HAWQ_SEARCH_COMPILE", request.param)
    fused_lsq.reset_kernels()
    yield request.param
    fused_lsq.reset_kernels()


def _reference(x, s, g, qmin, qmax):
    """LSQ written out with autograd on plain ops (float32), the straight-through way."""
    x = x.detach().float().requires_grad_(True)
    s = s.detach().clone().requires_grad_(True)
    s_scaled = s * g + (s - s * g).detach()  # value s, gradient times g
    v = x / s_scaled
    inside = ((v >= qmin) & (v <= qmax)).float()
    q = torch.clamp(torch.round(v), qmin, qmax)
    v_ste = v * inside + (q - v * inside).detach()  # value q, gradient 1 inside the grid
    out = v_ste * s_scaled
    return out, x, s


@pytest.mark.parametrize("mode", ["off", "on"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qmin,qmax", [(0.0, 15.0), (-7.0, 7.0), (0.0, 255.0)])
def test_kernels_match_the_lsq_formula(mode, dtype, qmin, qmax):
    gen = torch.Generator().manual_seed(int(qmax))
    x = (torch.randn(4, 3, 5, 6, generator=gen) * 2).to(dtype).requires_grad_(True)
    step = torch.tensor(0.21, requires_grad=True)
    grad = torch.randn(4, 3, 5, 6, generator=gen).to(dtype)
    out = lsq_act_quantize(x, step, 0.05, qmin, qmax)
    assert out.dtype == dtype
    out.backward(grad)
    ref, rx, rs = _reference(x, step, 0.05, qmin, qmax)
    ref.backward(grad.float())
    s = step.detach()
    v = x.detach().float() / s
    assert torch.equal(out, (torch.clamp(torch.round(v), qmin, qmax) * s).to(dtype))
    assert torch.allclose(x.grad.float(), rx.grad, rtol=1e-2)
    assert torch.allclose(step.grad, rs.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["auto"], indirect=True)
def test_a_broken_compiler_falls_back_to_eager_with_one_warning(mode, monkeypatch):
    def broken(fn):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(fused_lsq, "_compiled", broken)
    x = torch.randn(8, requires_grad=True)
    step = torch.tensor(0.1, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        out = lsq_act_quantize(x, step, 1.0, 0.0, 15.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out.sum().backward()  # no second warning: the backward kernel is not tried again
    assert torch.equal(out, torch.clamp(torch.round(x.detach() / 0.1), 0, 15) * step.detach())


@pytest.mark.parametrize("mode", ["on"], indirect=True)
def test_compile_on_makes_a_failure_an_error(mode, monkeypatch):
    monkeypatch.setattr(fused_lsq, "_compiled", lambda fn: lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        lsq_act_quantize(torch.randn(3), torch.tensor(0.1), 1.0, 0.0, 15.0)
