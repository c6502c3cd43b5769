"""Solvers over one shared problem definition (:class:`SearchProblem`)."""

from searches.brute_force import BruteForceSearch
from searches.ilp import IlpSearch, resource_range
from searches.problem import Resource, SearchProblem, WeightGroup
from searches.result import SearchResult, SearchStatus

__all__ = [
    "BruteForceSearch",
    "IlpSearch",
    "Resource",
    "SearchProblem",
    "SearchResult",
    "SearchStatus",
    "WeightGroup",
    "resource_range",
]
