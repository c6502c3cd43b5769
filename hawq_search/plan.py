"""Bit-width plans: the versioned ``plan.json`` and :func:`apply_plan`.

A plan names, for every quantizable layer, the bit-width of each output channel's weights and of
the layer's input activation (with its calibrated clip), plus the costs the plan claims. Costs
are recomputed from the bits by :meth:`Plan.recompute_totals`, never trusted from a solver.

Plans are checked on load against the published JSON Schema
(``hawq_search/schemas/plan.schema.json``, see :mod:`hawq_search.plan_schema`), then for what a
schema cannot say (layers listed twice, channel counts that disagree). Schema version 2 adds
``model.source`` and ``provenance.search``; version 1 plans load and are migrated in memory.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from cost_models.size import layer_bops, layer_weight_bytes
from hawq_search.core.atomic import atomic_file
from hawq_search.core.bits import is_quantized
from hawq_search.core.exceptions import PlanMismatchError, PlanVersionError, UserInputError
from hawq_search.core.layers import LayerInfo
from hawq_search.plan_schema import validate_plan_dict

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
V1_MODEL_SOURCE = "registry"  # model.source of a version 1 plan (v1 had no such field)
SIZE_DEFINITION = (
    "bytes = per layer ceil(sum_c params_c * w_bits_c / 8) + 4 B fp32 scale per quantized "
    "output channel + 4 B fp32 bias (or folded BatchNorm shift) per output channel; "
    "16/32-bit channels are stored as fp16/fp32 without scale; 1 MB = 10**6 bytes"
)

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "SIZE_DEFINITION",
    "LayerPlan",
    "Plan",
    "apply_plan",
]


@dataclass
class LayerPlan:
    name: str
    type: str
    weight_shape: tuple[int, ...]
    w_bits: list[int]
    a_bits: int
    act_group: str
    act_clip: float
    act_signed: bool
    bytes: int = 0
    bops: int = 0
    predicted_loss_increase: float = 0.0
    info: LayerInfo | None = field(default=None, repr=False, compare=False)
    hardware: dict | None = None  # latency_s, energy_j, bound, extrapolated under the accelerator
    # Learned per-channel weight scales of a fine-tuned plan (None: MSE scales at apply time).
    w_scale: list[float] | None = None

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "type": self.type,
            "weight_shape": list(self.weight_shape),
            "w_bits": list(self.w_bits),
            "a_bits": self.a_bits,
            "act_group": self.act_group,
            "act_clip": self.act_clip,
            "act_signed": self.act_signed,
            "bytes": self.bytes,
            "bops": self.bops,
            "predicted_loss_increase": self.predicted_loss_increase,
            "hardware": self.hardware,
            "layer": self.info.to_dict() if self.info else None,
        }
        if self.w_scale is not None:
            d["w_scale"] = [float(v) for v in self.w_scale]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerPlan:
        info = LayerInfo.from_dict(d["layer"]) if d.get("layer") else None
        return cls(
            name=d["name"],
            type=d["type"],
            weight_shape=tuple(d["weight_shape"]),
            w_bits=[int(b) for b in d["w_bits"]],
            a_bits=int(d["a_bits"]),
            act_group=d["act_group"],
            act_clip=float(d["act_clip"]),
            act_signed=bool(d["act_signed"]),
            bytes=int(d.get("bytes", 0)),
            bops=int(d.get("bops", 0)),
            predicted_loss_increase=float(d.get("predicted_loss_increase", 0.0)),
            info=info,
            hardware=d.get("hardware"),
            w_scale=None if d.get("w_scale") is None else [float(v) for v in d["w_scale"]],
        )


@dataclass
class Plan:
    model: dict  # id, input_shape, num_classes, preprocess
    layers: list[LayerPlan]
    budgets: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    totals: dict = field(default_factory=dict)

    def recompute_totals(self) -> dict:
        """Bytes, BOPs and bit statistics recomputed from the bits alone (independent of the solver)."""
        total_bytes = total_bops = 0
        weight_bits = params = 0
        for lp in self.layers:
            if lp.info is None:
                raise UserInputError(f"plan layer {lp.name} lacks its layer description")
            lp.bytes = layer_weight_bytes(lp.info, lp.w_bits)
            lp.bops = layer_bops(lp.info, lp.w_bits, lp.a_bits)
            total_bytes += lp.bytes
            total_bops += lp.bops
            ppc = lp.info.params_per_channel
            weight_bits += sum(ppc * b for b in lp.w_bits)
            params += lp.info.params
        self.totals = {
            "bytes": total_bytes,
            "mb": total_bytes / 1e6,
            "bops": total_bops,
            "params": params,
            "avg_weight_bits": weight_bits / params,
            "predicted_loss_increase": float(sum(lp.predicted_loss_increase for lp in self.layers)),
        }
        return self.totals

    def price(self, cost_model) -> dict:
        """Per-layer and total latency/energy under ``cost_model`` (one sub-kernel per executed
        precision, exact tile padding), recorded in the plan; returns the totals. Totals include
        the model's measured non-quantizable ops (``cost_model.fixed_cost``) when known."""
        latency = energy = measured = 0.0
        extrapolated = []
        for lp in self.layers:
            c = cost_model.plan_cost(lp.info, lp.w_bits, lp.a_bits)
            lp.hardware = {
                "latency_s": c.latency_s,
                "energy_j": c.energy_j,
                "energy_measured": c.energy_measured,
                "bound": c.bound,
                "extrapolated": c.extrapolated,
                "sub_kernels": cost_model.kernel_groups(lp.info, lp.w_bits, lp.a_bits),
            }
            latency += c.latency_s
            energy += c.energy_j
            measured += c.measured_energy_j
            if c.extrapolated:
                extrapolated.append(lp.name)
        other = cost_model.fixed_cost([lp.info for lp in self.layers])
        latency += other.latency_s
        energy += other.energy_j
        measured += other.measured_energy_j
        self.totals.update(
            {
                "other_ops_latency_s": other.latency_s,
                "accelerator": cost_model.name,
                "accelerator_batch": cost_model.batch,
                "latency_s": latency,
                "energy_j": energy,
                "energy_measured": measured > 0 and abs(measured - energy) <= 1e-9 * energy,
                "measured_energy_j": measured,
                "energy_note": cost_model.energy_note(),
                "extrapolated_layers": extrapolated,
            }
        )
        return self.totals

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "budgets": self.budgets,
            "totals": self.totals,
            "provenance": self.provenance,
            "layers": [lp.to_dict() for lp in self.layers],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (unique temp file in the same directory, fsync, rename), so an
        interrupted run never leaves half a plan nor a stray temp file."""
        text = json.dumps(self.to_dict(), indent=1)
        with atomic_file(path, "w") as f:
            f.write(text)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """A plan from its JSON object (version 1 or 2); one-line UserInputError if invalid."""
        return cls._from_dict(d, "plan")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        source = f"plan file {path}"
        return cls._from_dict(_read_json(path, source), source)

    @classmethod
    def _from_dict(cls, d: object, source: str) -> Plan:
        if not isinstance(d, dict):
            raise UserInputError(
                f"{source} is a JSON {type(d).__name__}, not an object: regenerate it"
            )
        _check_version(d.get("schema_version"), source)
        validate_plan_dict(d, source)
        d = _migrate(d)
        try:
            layers = [LayerPlan.from_dict(x) for x in d["layers"]]
            plan = cls(
                d["model"],
                layers,
                d.get("budgets", {}),
                d.get("provenance", {}),
                d.get("totals", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(
                f"{source} is malformed ({type(exc).__name__}: {exc}): regenerate it"
            ) from None
        _check_layers(layers, source)
        return plan

    @property
    def act_quantized(self) -> bool:
        return any(is_quantized(lp.a_bits) for lp in self.layers)


def _read_json(path: Path, source: str) -> object:
    """Parse a plan file, turning every way it can be unreadable into one-line UserInputError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise UserInputError(f"{source} is a directory, not a plan file") from None
    except OSError as exc:
        raise UserInputError(f"{source} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserInputError(
            f"{source} is not UTF-8 text (bad byte at offset {exc.start}), so not a plan: "
            "regenerate it"
        ) from None
    if "\x00" in text:
        raise UserInputError(f"{source} is a binary file, not a JSON plan: regenerate it")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{source} is not valid JSON (line {exc.lineno}): regenerate it"
        ) from None
    except RecursionError:
        raise UserInputError(f"{source} is nested too deeply to be a plan: regenerate it") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        msg = " ".join(str(exc).split())
        raise UserInputError(f"{source} is not valid JSON ({msg}): regenerate it") from None


def _check_version(version: object, source: str) -> None:
    if version is None:
        raise PlanVersionError(
            f"{source} has no schema_version, so it is not a hawq-search plan: regenerate it"
        )
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = " and ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
        raise PlanVersionError(
            f"{source}: schema_version {_short(version)} is not supported (this hawq-search "
            f"reads {supported}): regenerate the plan with this version"
        )


def _short(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _migrate(d: dict) -> dict:
    """A validated plan dict in the current schema version (the input is not modified)."""
    if d["schema_version"] == SCHEMA_VERSION:
        return d
    # 1 -> 2: model.source appeared (v1 plans came from the model registry unless they say
    # otherwise); provenance.search is optional in both versions.
    model = {"source": V1_MODEL_SOURCE, **d["model"]}
    return {**d, "schema_version": SCHEMA_VERSION, "model": model}


def _check_layers(layers: list[LayerPlan], source: str) -> None:
    """What the schema cannot say: unique names, channel counts and shapes that agree, one
    activation bit-width per shared activation quantizer."""
    seen: set[str] = set()
    group_bits: dict[str, tuple[str, int]] = {}
    for i, lp in enumerate(layers):
        where = f"{source}: field layers[{i}]"
        if lp.name in seen:
            raise UserInputError(f"{where}: layer {lp.name!r} is listed twice: regenerate the plan")
        seen.add(lp.name)
        problem = _channel_problem(lp)
        if problem:
            raise UserInputError(f"{where} ({lp.name}): {problem}: regenerate the plan")
        first, bits = group_bits.setdefault(lp.act_group, (lp.name, lp.a_bits))
        if bits != lp.a_bits:
            raise UserInputError(
                f"{where} ({lp.name}): a_bits {lp.a_bits} differs from a_bits {bits} of "
                f"{first}, which shares act_group {lp.act_group!r}: regenerate the plan"
            )


def _channel_problem(lp: LayerPlan) -> str | None:
    """Why ``lp``'s channel count or shape is inconsistent, or None."""
    channels = lp.weight_shape[0]
    if len(lp.w_bits) != channels:
        return f"{len(lp.w_bits)} w_bits for weight_shape[0] = {channels} output channels"
    if lp.w_scale is not None and len(lp.w_scale) != channels:
        return f"{len(lp.w_scale)} w_scale values for {channels} output channels"
    if lp.info is not None:
        if tuple(lp.info.weight_shape) != tuple(lp.weight_shape):
            return (
                f"weight_shape {list(lp.weight_shape)} differs from layer.weight_shape "
                f"{list(lp.info.weight_shape)}"
            )
        if lp.info.out_channels != channels:
            return f"{channels} output channels but layer.out_channels = {lp.info.out_channels}"
    return None


def _check_fit(model: nn.Module, plan: Plan) -> dict[str, nn.Module]:
    from hawq_search.graph.trace import QUANTIZABLE

    modules = dict(model.named_modules())
    quantizable = {n for n, m in modules.items() if isinstance(m, QUANTIZABLE)}
    problems = []
    for lp in plan.layers:
        m = modules.get(lp.name)
        if m is None:
            problems.append(f"{lp.name}: no such layer")
        elif not isinstance(m, QUANTIZABLE):
            problems.append(f"{lp.name}: is {type(m).__name__}, not Conv2d/Linear")
        elif tuple(m.weight.shape) != tuple(lp.weight_shape):
            problems.append(
                f"{lp.name}: weight {tuple(m.weight.shape)} vs plan {tuple(lp.weight_shape)}"
            )
        elif len(lp.w_bits) != m.weight.shape[0]:
            problems.append(
                f"{lp.name}: {len(lp.w_bits)} channel bit-widths for {m.weight.shape[0]} channels"
            )
    missing = sorted(quantizable - {lp.name for lp in plan.layers})
    problems += [f"{name}: not in the plan" for name in missing]
    if problems:
        shown = "; ".join(problems[:6]) + (
            f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        )
        raise PlanMismatchError(
            f"plan does not match the model ({len(problems)} mismatches: {shown})"
        )
    return modules


def apply_plan(model: nn.Module, plan: Plan, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every planned layer replaced by its fake-quant version.

    The result trains like any module (straight-through rounding), so it drops into the user's
    own training loop; parameter names are unchanged. Layers with learned scales (``w_scale``,
    written by a fine-tune) use them instead of MSE scales, so the fine-tuned model is rebuilt
    exactly from its checkpoint and plan. Raises :class:`PlanMismatchError` listing
    every layer whose name or shape differs from the plan.
    """
    import torch

    from hawq_search.quant.modules import ActQuantizer, QuantConv2d, QuantLinear

    if not inplace:
        model = copy.deepcopy(model)
    modules = _check_fit(model, plan)
    act_quant: dict[str, ActQuantizer] = {}
    for lp in plan.layers:
        if lp.act_group not in act_quant and is_quantized(lp.a_bits):
            act_quant[lp.act_group] = ActQuantizer(lp.a_bits, lp.act_clip, lp.act_signed)
        act = act_quant.get(lp.act_group) if is_quantized(lp.a_bits) else None
        m = modules[lp.name]
        bits = torch.tensor(lp.w_bits, dtype=torch.int64)
        scales = None if lp.w_scale is None else torch.tensor(lp.w_scale, dtype=torch.float32)
        cls = QuantConv2d if isinstance(m, nn.Conv2d) else QuantLinear
        q = cls.from_float(m, bits, act, scales=scales)
        parent_name, _, child = lp.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
    return model


def layer_summary(plan: Plan) -> list[dict]:
    """Per-layer rows for reports: mean/min/max weight bits, activation bits, bytes."""
    rows = []
    for lp in plan.layers:
        bits = np.array(lp.w_bits)
        rows.append(
            {
                "name": lp.name,
                "channels": len(bits),
                "w_mean": float(bits.mean()),
                "w_min": int(bits.min()),
                "w_max": int(bits.max()),
                "a_bits": lp.a_bits,
                "bytes": lp.bytes,
                "pred": lp.predicted_loss_increase,
            }
        )
    return rows
