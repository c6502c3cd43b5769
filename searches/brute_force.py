"""Exhaustive search for tiny problems: the reference the exact solvers are tested against."""

from __future__ import annotations

import itertools

import numpy as np

from searches._base import BaseSearch
from searches.problem import SearchProblem
from searches.result import SearchResult, SearchStatus

__all__ = ["BruteForceSearch"]


class BruteForceSearch(BaseSearch):
    name = "brute-force"

    def __init__(self, max_plans: int = 2_000_000) -> None:
        self.max_plans = max_plans

    def solve(self, problem: SearchProblem) -> SearchResult:
        w_opts = [np.nonzero(row)[0] for row in problem.w_allowed]
        a_opts = [np.nonzero(row)[0] for row in problem.a_allowed]
        n = np.prod([len(o) for o in w_opts + a_opts], dtype=float)
        if n > self.max_plans:
            raise ValueError(f"{int(n)} plans exceed max_plans={self.max_plans}")
        best = None
        for w in itertools.product(*w_opts):
            for a in itertools.product(*a_opts):
                obj, costs = problem.objective_and_totals(np.array(w), np.array(a))
                if any(
                    r.budget is not None
                    and costs[r.name] > (r.budget - r.slack) * (1 + 1e-9) + 1e-300
                    for r in problem.resources
                ):
                    continue
                if best is None or obj < best[0] - 1e-12 * abs(best[0]):
                    best = (obj, np.array(w), np.array(a), costs)
        if best is None:
            return SearchResult(SearchStatus.INFEASIBLE, "no plan meets the budgets")
        return SearchResult(
            SearchStatus.OPTIMAL,
            "exhaustive",
            (problem.solution(best[1], best[2]),),
            stats={"solver": self.name, "plans": int(n)},
        )
