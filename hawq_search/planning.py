"""Turn bit choices into :class:`~hawq_search.plan.Plan` objects: a solver's solution, a uniform
baseline, or any per-channel assignment. Totals are recomputed from the bits (and re-priced on
the accelerator) here, never copied from a solver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cost_models.base import CostModel
from hawq_search import __version__
from hawq_search.core.bits import is_quantized
from hawq_search.core.exceptions import InfeasibleBudgetError
from hawq_search.graph.trace import ModelGraph
from hawq_search.plan import SIZE_DEFINITION, LayerPlan, Plan
from searches import SearchProblem, SearchResult, Solution

__all__ = ["PlanContext", "make_plan", "plan_from_solution", "uniform_plan", "plan_budgets"]

Ranges = tuple[dict[str, dict[int, float]], dict[str, bool]]


@dataclass
class PlanContext:
    """What every plan of one model shares: its graph and description, the calibrated
    activation ranges (computed on first need), provenance and the accelerator, if any."""

    graph: ModelGraph
    model_info: dict  # the plan's "model" entry: id, source, input_shape, num_classes, ...
    ranges: Callable[[], Ranges]
    provenance: dict = field(default_factory=dict)
    cost_model: CostModel | None = None


def plan_budgets(
    size_bytes: float | None,
    bops: float | None,
    latency_s: float | None = None,
    energy_j: float | None = None,
    accelerator: str | None = None,
) -> dict:
    """The plan's "budgets" entry."""
    return {
        "size_bytes": size_bytes,
        "bops": bops,
        "latency_s": latency_s,
        "energy_j": energy_j,
        "accelerator": accelerator,
        "size_definition": SIZE_DEFINITION,
    }


def make_plan(
    ctx: PlanContext,
    w_bits: dict[str, list[int]],
    a_bits: dict[str, int],
    loss: dict[str, float] | None = None,
    act_loss: dict[str, float] | None = None,
) -> Plan:
    """A plan from per-channel weight bits (by layer) and activation bits (by group)."""
    quantized = any(is_quantized(b) for b in a_bits.values())
    clips, signed = ctx.ranges() if quantized else ({}, {})
    layers, seen_groups = [], set()
    for layer in ctx.graph.layers:
        ab = a_bits[layer.act_group]
        pred = (loss or {}).get(layer.name, 0.0)
        if layer.act_group not in seen_groups:  # charge a group's activation loss once
            pred += (act_loss or {}).get(layer.act_group, 0.0)
            seen_groups.add(layer.act_group)
        layers.append(
            LayerPlan(
                name=layer.name,
                type=layer.op,
                weight_shape=layer.weight_shape,
                w_bits=list(w_bits[layer.name]),
                a_bits=ab,
                act_group=layer.act_group,
                act_clip=float(clips.get(layer.act_group, {}).get(ab, 0.0)),
                act_signed=bool(signed.get(layer.act_group, False)),
                predicted_loss_increase=pred,
                info=layer,
            )
        )
    provenance = {
        **ctx.provenance,
        "hawq_search_version": __version__,
        "torch_version": torch.__version__,
    }
    plan = Plan(model=dict(ctx.model_info), layers=layers, provenance=provenance)
    plan.recompute_totals()
    if ctx.cost_model is not None:
        plan.price(ctx.cost_model)
    return plan


def plan_from_solution(
    ctx: PlanContext,
    problem: SearchProblem,
    solution: Solution,
    result: SearchResult,
    budgets: dict,
    search_info: dict | None = None,
) -> Plan:
    """The plan of one solution, with its predicted losses, budgets and solver provenance."""
    loss = {name: 0.0 for name in problem.layer_names}
    for g, i in zip(problem.weight_groups, solution.w_choice, strict=True):
        loss[g.layer] += float(g.loss[i])
    act_loss = {
        grp: float(problem.act_loss[k, j])
        for k, (grp, j) in enumerate(zip(problem.act_groups, solution.a_choice, strict=True))
    }
    plan = make_plan(ctx, dict(solution.layer_bits), dict(solution.act_bits), loss, act_loss)
    plan.budgets = dict(budgets)
    plan.provenance.update(
        {
            "sensitivity": problem.meta.get("sensitivity"),
            "sensitivity_samples": problem.meta.get("sensitivity_samples"),
            "solver": result.stats.get("solver"),
            "solver_status": result.status.value,
            "mip_gap": result.stats.get("mip_gap"),
            "solve_time_s": result.stats.get("solve_time_s"),
            "granularity": problem.meta.get("granularity"),
            "predicted_objective": solution.objective,
            "search": dict(search_info or {}),
        }
    )
    return plan


def uniform_plan(
    ctx: PlanContext,
    wbits: tuple[int, ...],
    abits: tuple[int, ...],
    budgets: dict,
) -> Plan:
    """The most precise single (weight, activation) bit pair that fits ``budgets`` (the plan
    "budgets" entry: size_bytes, bops, latency_s, energy_j)."""
    limits = {
        "bytes": "size_bytes",
        "bops": "bops",
        "latency_s": "latency_s",
        "energy_j": "energy_j",
    }
    for wb in sorted(wbits, reverse=True):
        for ab in sorted(abits, reverse=True):
            plan = make_plan(
                ctx,
                {layer.name: [wb] * layer.out_channels for layer in ctx.graph.layers},
                {g: ab for g in ctx.graph.act_groups},
            )
            if all(
                budgets.get(key) is None or plan.totals[total] <= budgets[key]
                for total, key in limits.items()
            ):
                plan.provenance["uniform_bits"] = {"w": wb, "a": ab}
                return plan
    raise InfeasibleBudgetError(
        "no uniform plan fits the budgets: add lower options to wbits or relax the budget",
        params=("wbits",),
    )
