"""What every search returns, modelled on scipy.optimize's result objects but typed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from searches.problem import Solution

__all__ = ["SearchStatus", "SearchResult"]


class SearchStatus(enum.Enum):
    OPTIMAL = "optimal"  # proven optimal within the requested gap
    FEASIBLE = "feasible"  # a plan meeting all budgets, optimality not proven (time limit)
    INFEASIBLE = "infeasible"
    ERROR = "error"


@dataclass(frozen=True)
class SearchResult:
    """``solutions``: best first. A single-objective search returns one; a multi-objective one
    returns its Pareto set (each a :class:`~searches.problem.Solution` with bits by layer and
    channel). Infeasible budgets are a status with an explanation in ``message``, not an error.
    """

    status: SearchStatus
    message: str
    solutions: tuple[Solution, ...] = ()
    stats: dict = field(default_factory=dict)  # solver, solve_time_s, mip_gap, n_vars, ...

    @property
    def success(self) -> bool:
        return self.status in (SearchStatus.OPTIMAL, SearchStatus.FEASIBLE) and bool(self.solutions)

    @property
    def best(self) -> Solution | None:
        return self.solutions[0] if self.solutions else None

    # Shorthands for the best solution.
    @property
    def w_choice(self) -> np.ndarray | None:
        return None if self.best is None else self.best.w_choice

    @property
    def a_choice(self) -> np.ndarray | None:
        return None if self.best is None else self.best.a_choice

    @property
    def objective(self) -> float | None:
        return None if self.best is None else self.best.objective

    @property
    def costs(self) -> dict[str, float]:
        return {} if self.best is None else dict(self.best.totals)
