"""Budget checks before any sensitivity is computed: infeasible budgets fail fast with the
smallest reachable value, budgets that cannot bind are a warning. Cost ranges do not depend on
losses, so they are computed on a problem whose losses are all zero."""

from __future__ import annotations

import warnings

import numpy as np

from cost_models.size import layer_weight_bytes
from hawq_search.core.exceptions import InfeasibleBudgetError, InputWarning
from hawq_search.core.units import format_budget
from hawq_search.graph.trace import ModelGraph
from hawq_search.sensitivity.table import SensitivityTable
from searches.ilp import resource_range
from searches.problem import SearchProblem

__all__ = ["BUDGET_PARAMS", "check_budgets", "joint_infeasibility", "uniform_bytes", "zero_table"]

# resource -> the argument that sets its budget (RunConfig / search_plan)
BUDGET_PARAMS = {
    "size": "budget_mb",
    "bops": "bops",
    "latency": "latency_ms",
    "energy": "energy_mj",
}


def zero_table(
    graph: ModelGraph, wbits: tuple[int, ...], abits: tuple[int, ...]
) -> SensitivityTable:
    """A table of zero losses: enough to build a problem whose costs are real."""
    weight = {layer.name: np.zeros((layer.out_channels, len(wbits))) for layer in graph.layers}
    act = {g: np.zeros(len(abits)) for g in graph.act_groups}
    return SensitivityTable("none", tuple(wbits), tuple(abits), weight, act)


def uniform_bytes(graph: ModelGraph, bits: int) -> int:
    """Stored bytes of every layer at ``bits`` (size is monotone in every channel's bits)."""
    return sum(layer_weight_bytes(layer, [bits] * layer.out_channels) for layer in graph.layers)


def _reachable(graph: ModelGraph, problem: SearchProblem, name: str) -> tuple[float, float]:
    if name == "size":
        return uniform_bytes(graph, min(problem.w_bits)), uniform_bytes(graph, max(problem.w_bits))
    return resource_range(problem, name)


def check_budgets(graph: ModelGraph, problem: SearchProblem) -> None:
    """Raise :class:`InfeasibleBudgetError` for a budget no plan meets even alone; warn for one
    that every plan meets."""
    for r in problem.resources:
        if r.budget is None:
            continue
        low, high = _reachable(graph, problem, r.name)
        param = BUDGET_PARAMS.get(r.name, r.name)
        if not low <= r.budget:
            raise InfeasibleBudgetError(
                f"{param} {format_budget(r.name, r.budget)} is infeasible: the smallest plan "
                f"with wbits {','.join(map(str, problem.w_bits))} and abits "
                f"{','.join(map(str, problem.a_bits))} needs {format_budget(r.name, low)}",
                params=(param, "wbits", "abits"),
            )
        if high <= r.budget:
            message = (
                f"{param} {format_budget(r.name, r.budget)} does not bind: the largest plan "
                f"needs only {format_budget(r.name, high)}"
            )
            warnings.warn(InputWarning(message, params=(param,)), stacklevel=3)


def joint_infeasibility(
    graph: ModelGraph, problem: SearchProblem, targets: dict
) -> InfeasibleBudgetError:
    """The error for budgets each reachable alone but not together, naming every one of them.

    ``targets``: resource name -> the user's budget (before any tightening)."""
    parts, lows, params = [], [], []
    for r in problem.resources:
        if targets.get(r.name) is None:
            continue
        param = BUDGET_PARAMS.get(r.name, r.name)
        low = _reachable(graph, problem, r.name)[0]
        parts.append(f"{param} {format_budget(r.name, targets[r.name])}")
        lows.append(format_budget(r.name, low))
        params.append(param)
    if len(parts) == 1:
        message = (
            f"no plan meets {parts[0]} once each layer's exact cost is counted (smallest "
            f"reachable alone: {lows[0]}): relax it"
        )
    else:
        message = (
            f"no plan meets {' and '.join(parts)} together (each alone is reachable; smallest: "
            f"{', '.join(lows)}): relax one of them"
        )
    return InfeasibleBudgetError(message, params=tuple(params))
