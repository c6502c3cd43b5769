"""Re-ranking: the exact solver's K best distinct plans, measured, best measurement first.

The cheap fix for proxy errors: plans whose predicted losses are within a hair of the optimum
often differ by a point of accuracy when measured. ``RerankSearch`` asks its inner search for
several solutions (``IlpSearch(n_solutions=K)``: no-good cuts), calls ``measure`` on each and
returns them ordered by the measured loss, so the pipeline turns the best measured one into
the plan. Every solution comes from the inner search, so every budget holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from searches._base import BaseSearch
from searches.problem import SearchProblem, Solution
from searches.result import SearchResult

__all__ = ["RerankSearch"]


class RerankSearch(BaseSearch):
    """``inner``'s solutions ordered by ``measure(solution)["loss"]`` (ties: inner order)."""

    name = "rerank"

    def __init__(
        self,
        inner: BaseSearch,
        measure: Callable[[Solution], Mapping[str, float]],
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.inner, self.measure, self.progress = inner, measure, progress

    def describe(self) -> dict:
        return {**self.inner.describe(), "rerank": getattr(self.inner, "n_solutions", None)}

    def solve(self, problem: SearchProblem) -> SearchResult:
        result = self.inner.solve(problem)
        if not result.success:
            return result
        t0 = time.perf_counter()
        rows = []
        for k, sol in enumerate(result.solutions):
            metrics = {key: float(v) for key, v in self.measure(sol).items()}
            rows.append((metrics["loss"], k, sol, metrics))
            if self.progress is not None:
                self.progress(k + 1, len(result.solutions))
        rows.sort(key=lambda row: (row[0], row[1]))
        stats = dict(result.stats)
        stats["rerank"] = [
            {"ilp_rank": k, "proxy": sol.objective, **metrics} for _, k, sol, metrics in rows
        ]
        stats["rerank_time_s"] = time.perf_counter() - t0
        stats["best_metrics"] = rows[0][3]
        return SearchResult(result.status, result.message, tuple(row[2] for row in rows), stats)
