"""A trainable LSQ model from a float model and a :class:`~hawq_search.plan.Plan`, and its
export back to a float checkpoint plus a plan with learned scales.

The model is :func:`~hawq_search.plan.apply_plan`'s, with each layer's MSE scales turned into
learnable per-channel steps and each shared activation quantizer into a learnable per-tensor
step initialised from the plan's calibrated clip. Each layer also holds the bits it uses *now*
(``bits_now``), which schedules change (a channel at 32 bits is not quantized yet); when a
channel moves to a new width its step is re-initialised by MSE on its current weights.
In eval mode quantizers compute exactly what ``apply_plan`` computes from the exported plan,
so the rebuilt model gives bit-identical outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hawq_search.core.bits import is_quantized
from hawq_search.plan import Plan, apply_plan
from hawq_search.quant.activation import act_levels, fake_quant_activation
from hawq_search.quant.modules import (
    ActQuantizer,
    QuantConv2d,
    QuantLayer,
    QuantLinear,
    mse_scales_for_bits,
)
from hawq_search.quant.weight import fake_quant_per_channel
from hawq_search.training.fused_lsq import lsq_act_quantize
from hawq_search.training.lsq import act_grad_scale, grad_scale, weight_grad_scale

__all__ = [
    "LsqActQuantizer",
    "LsqConv2d",
    "LsqLinear",
    "build_qat_model",
    "clamp_steps",
    "export_plan",
    "float_state_dict",
    "lsq_layers",
    "step_parameters",
]

MIN_STEP = 1e-8


class LsqActQuantizer(nn.Module):
    """Per-tensor activation quantizer with a learned step (LSQ)."""

    def __init__(self, bits: int, clip: float, signed: bool) -> None:
        super().__init__()
        self.planned = int(bits)
        self.signed = bool(signed)
        qmax = act_levels(self.planned, self.signed)[1]
        self.step = nn.Parameter(torch.tensor(max(clip, 1e-6) / qmax, dtype=torch.float32))
        self.register_buffer("bits_now", torch.tensor(self.planned))
        self.register_buffer("step_bits", torch.tensor(self.planned))

    def set_bits(self, bits: int) -> None:
        """Use ``bits`` from now on; a new width keeps the clip (the step is rescaled)."""
        bits = int(bits)
        old = int(self.step_bits)
        if is_quantized(bits) and bits != old:
            ratio = act_levels(old, self.signed)[1] / act_levels(bits, self.signed)[1]
            with torch.no_grad():
                self.step.mul_(ratio)
            self.step_bits.fill_(bits)
        self.bits_now.fill_(bits)

    def clip(self) -> float:
        """The clip ``apply_plan`` reproduces this quantizer from (at the current bits)."""
        return float(self.step.detach()) * act_levels(int(self.step_bits), self.signed)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = int(self.bits_now)
        if not is_quantized(bits):
            return x
        if not (self.training and torch.is_grad_enabled()):
            # the export path: the clip through ActQuantizer's float32 buffer, as apply_plan
            clip = float(torch.tensor(self.clip(), dtype=torch.float32))
            return fake_quant_activation(x, bits, clip, self.signed)
        qmin, qmax = act_levels(bits, self.signed)
        g = act_grad_scale(bits, self.signed, x[0].numel())
        return lsq_act_quantize(x, self.step, g, qmin, qmax)


class _Lsq(QuantLayer):
    """Learned per-channel weight steps (mixin over the fake-quant layers)."""

    def _init_lsq(self, act: LsqActQuantizer | None) -> None:
        scale = self._buffers.pop("w_scale")
        self.w_step = nn.Parameter(scale.clone())
        self.register_buffer("bits_now", self.w_bits.clone())
        self.register_buffer("w_gscale", self._gscale())
        self.act_quant = act

    def _gscale(self) -> torch.Tensor:
        per_channel = self.weight[0].numel()
        return weight_grad_scale(self.bits_now, per_channel).to(self.weight.device)

    @torch.no_grad()
    def set_bits(self, bits: torch.Tensor) -> None:
        """Use ``bits`` per channel; channels moving to a new width get MSE steps."""
        bits = bits.to(self.bits_now.device, torch.int64)
        moved = (bits != self.bits_now) & (bits < 16)
        if moved.any():
            new = mse_scales_for_bits(self.weight.detach()[moved], bits[moved])
            self.w_step[moved] = new.to(self.w_step.dtype)
        self.bits_now.copy_(bits)
        self.w_gscale.copy_(self._gscale())

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_per_channel(
            self.weight, self.bits_now, grad_scale(self.w_step, self.w_gscale)
        )


class LsqConv2d(_Lsq, QuantConv2d):
    pass


class LsqLinear(_Lsq, QuantLinear):
    pass


def build_qat_model(model: nn.Module, plan: Plan) -> nn.Module:
    """A trainable copy of ``model`` quantized as ``plan`` says (``PlanMismatchError`` if the
    plan does not fit); layers sharing an input share one activation step."""
    qmodel = apply_plan(model, plan)
    acts: dict[int, LsqActQuantizer] = {}
    for name, m in list(qmodel.named_modules()):
        if not isinstance(m, (QuantConv2d, QuantLinear)):
            continue
        act = m.act_quant
        if isinstance(act, ActQuantizer) and id(act) not in acts:
            acts[id(act)] = LsqActQuantizer(act.bits, float(act.clip), act.signed)
        new_act = acts.get(id(act)) if act is not None else None
        cls = LsqConv2d if isinstance(m, nn.Conv2d) else LsqLinear
        q = cls.from_float(m, m.w_bits, None, scales=m.w_scale)
        q._init_lsq(new_act)
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        setattr(parent, child, q)
    device = next(iter(model.parameters())).device
    return qmodel.to(device)


def lsq_layers(model: nn.Module) -> dict[str, _Lsq]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _Lsq)}


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned steps (no weight decay on them)."""
    out = {}
    for m in model.modules():
        if isinstance(m, _Lsq):
            out[id(m.w_step)] = m.w_step
        elif isinstance(m, LsqActQuantizer):
            out[id(m.step)] = m.step
    return list(out.values())


@torch.no_grad()
def clamp_steps(model: nn.Module) -> None:
    """Keep every step positive (a valid scale) after an optimizer step."""
    for p in step_parameters(model):
        p.clamp_(min=MIN_STEP)


def float_state_dict(qmodel: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights under the float model's own keys (a plain checkpoint of it)."""
    keys = set(model.state_dict())
    return {k: v.detach().clone() for k, v in qmodel.state_dict().items() if k in keys}


def export_plan(qmodel: nn.Module, plan: Plan, info: dict) -> Plan:
    """``plan`` with the learned weight scales and activation clips, and ``info`` under
    ``provenance.finetune``; every channel must be at its planned width."""
    layers = lsq_layers(qmodel)
    out = copy.deepcopy(plan)
    for lp in out.layers:
        m = layers[lp.name]
        if not torch.equal(m.bits_now.cpu(), torch.tensor(lp.w_bits)):
            raise RuntimeError(f"{lp.name}: the schedule did not end at the planned bits")
        lp.w_scale = [float(v) for v in m.w_step.detach().float().cpu()]
        if m.act_quant is not None:
            lp.act_clip = m.act_quant.clip()
    out.provenance["finetune"] = info
    return out
