"""The solver seam: every search (exact ILP, brute force, Optuna, yours) is a :class:`BaseSearch`."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from searches.problem import SearchProblem, Solution
from searches.result import SearchResult

__all__ = ["BaseSearch"]


class BaseSearch(abc.ABC):
    """Chooses bit options for a :class:`~searches.problem.SearchProblem`.

    A search sees only the problem: names, arrays and budgets (no model, no torch), so it can
    run in a worker process that loaded the problem from a file (``SearchProblem.load``).

    Call order, as the pipeline (``hawq_search.repricing.solve_within_exact_budgets``) uses it:

    1. ``warm_start(solutions)`` -- optional: known good plans (e.g. the ILP optimum handed to a
       stochastic search). Default: ignored.
    2. ``solve(problem)`` -- required. Must return a :class:`~searches.result.SearchResult`
       whose solutions come from ``problem.solution(w_choice, a_choice)`` (which recomputes
       objective and totals independently of the solver) and meet every budget; infeasible
       budgets are ``SearchStatus.INFEASIBLE`` with an explanation, not an exception.
    3. With an accelerator, the exact tile-padded cost of the best solution is checked outside
       the search; if it exceeds a budget, ``solve`` is called again on a new problem with
       tightened budgets. A search must therefore not assume it is called once.

    ``describe()`` -- optional: the settings to record in a plan's provenance.

    Class attribute ``name`` identifies the search in plans and reports.
    """

    name: str = "search"

    @abc.abstractmethod
    def solve(self, problem: SearchProblem) -> SearchResult:
        """Best plan(s) of ``problem`` within its budgets."""

    def warm_start(self, solutions: Sequence[Solution]) -> None:  # noqa: B027 - optional hook
        """Hint known good solutions before :meth:`solve`; the default ignores them."""

    def describe(self) -> dict:
        """Settings worth recording next to a plan (e.g. time limit, gap)."""
        return {"search": self.name}
