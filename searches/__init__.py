"""Solvers over one shared problem definition (:class:`SearchProblem`).

Add a solver by subclassing :class:`BaseSearch` (one ``solve(problem) -> SearchResult``); the
pipeline builds the problem, re-prices the winning plan on the accelerator and turns it into a
plan for any solver. This package imports only ``hawq_search.core``, numpy, scipy and (for
``OptunaSearch``, on first use) optuna: no torch.
"""

from searches._base import BaseSearch
from searches.brute_force import BruteForceSearch
from searches.ilp import IlpSearch, resource_range
from searches.problem import Resource, SearchProblem, Solution, WeightGroup
from searches.rerank import RerankSearch
from searches.result import SearchResult, SearchStatus

__all__ = [
    "BaseSearch",
    "BruteForceSearch",
    "IlpSearch",
    "OptunaSearch",
    "RerankSearch",
    "Resource",
    "SearchProblem",
    "SearchResult",
    "SearchStatus",
    "Solution",
    "WeightGroup",
    "resource_range",
]


def __getattr__(name: str):
    """``OptunaSearch`` on first use: importing Optuna (SQLAlchemy, ...) costs about a second."""
    if name == "OptunaSearch":
        from searches.optuna_search import OptunaSearch

        return OptunaSearch
    raise AttributeError(f"module 'searches' has no attribute {name!r}")
