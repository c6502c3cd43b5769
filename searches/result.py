"""What every search returns, modelled on scipy.optimize's result objects but typed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SearchStatus", "SearchResult"]


class SearchStatus(enum.Enum):
    OPTIMAL = "optimal"  # proven optimal within the requested gap
    FEASIBLE = "feasible"  # a plan meeting all budgets, optimality not proven (time limit)
    INFEASIBLE = "infeasible"
    ERROR = "error"


@dataclass(frozen=True)
class SearchResult:
    status: SearchStatus
    message: str
    w_choice: np.ndarray | None = None  # option index per weight group
    a_choice: np.ndarray | None = None  # option index per activation group
    objective: float | None = None  # predicted loss increase (unscaled)
    costs: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # solver, solve_time_s, mip_gap, n_vars, ...

    @property
    def success(self) -> bool:
        return self.status in (SearchStatus.OPTIMAL, SearchStatus.FEASIBLE)
