"""Search within the *exact* hardware budgets, for any solver.

A problem prices latency and energy linearly (tiles of channels per executed precision, one
overhead per sub-kernel), which is exact for whole layers. The exact price of a mixed layer
(``CostModel.plan_cost``: sub-kernels padded to the array's tiles) can be higher, so the best
solution is re-priced exactly and, while it exceeds a budget, the problem's budget is tightened
by the excess and the search runs again. Works with any :class:`~searches.BaseSearch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cost_models.base import CostModel
from hawq_search.core.exceptions import InfeasibleBudgetError
from hawq_search.graph.trace import ModelGraph
from searches import BaseSearch, SearchProblem, SearchResult, Solution

__all__ = ["Repriced", "exact_hardware_totals", "solve_within_exact_budgets"]

MAX_ROUNDS = 8


@dataclass(frozen=True)
class Repriced:
    """The last problem solved, its result (possibly infeasible), and how many rounds it took."""

    problem: SearchProblem
    result: SearchResult
    rounds: int


def exact_hardware_totals(
    graph: ModelGraph, cost_model: CostModel, solution: Solution
) -> dict[str, float]:
    """Exact latency (s) and energy (J) of a solution on ``cost_model``, tile padding included."""
    c = cost_model.model_cost(graph.layers, solution.layer_bits, solution.act_bits)
    return {"latency": c.latency_s, "energy": c.energy_j}


def solve_within_exact_budgets(
    search: BaseSearch,
    make_problem: Callable[[dict[str, float | None]], SearchProblem],
    targets: dict[str, float | None],
    exact_totals: Callable[[Solution], dict[str, float]] | None,
) -> Repriced:
    """Solve ``make_problem(budgets)``, tightening ``budgets`` until the exact totals of the best
    solution meet ``targets`` (resource -> budget, e.g. ``{"latency": 3e-3, "energy": None}``).

    Without ``exact_totals`` (no accelerator) this is one solve. Returns on the first infeasible
    or failed result, so the caller can explain it; raises :class:`InfeasibleBudgetError` when
    every round's exact cost exceeds a budget.
    """
    budgets = dict(targets)
    over: dict[str, float] = {}
    for rounds in range(1, MAX_ROUNDS + 1):
        problem = make_problem(budgets)
        result = search.solve(problem)
        if not result.success or exact_totals is None:
            return Repriced(problem, result, rounds)
        exact = exact_totals(result.best)
        over = {
            name: exact[name] - target
            for name, target in targets.items()
            if target is not None and exact[name] > target * (1 + 1e-9)
        }
        if not over:
            return Repriced(problem, result, rounds)
        for name, excess in over.items():
            budgets[name] -= excess * 1.02 + 1e-12
    params = tuple({"latency": "latency_ms", "energy": "energy_mj"}.get(n, n) for n in over)
    raise InfeasibleBudgetError(
        f"the exact (tile-padded) cost of every plan found exceeds the {' and '.join(params)} "
        "budget: relax it or use granularity layer",
        params=(*params, "granularity"),
    )
