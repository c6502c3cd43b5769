"""Exception hierarchy. Every error a user can cause derives from :class:`HawqSearchError`.

The CLI maps :class:`UserInputError` (and subclasses) to exit status 2 with a single line on
stderr, and any other exception to exit status 1. Library code words its messages in library
terms (argument names and values); only the CLI names flags.
"""

from __future__ import annotations

__all__ = [
    "HawqSearchError",
    "UserInputError",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "InfeasibleBudgetError",
    "PlanMismatchError",
    "PlanVersionError",
    "WeightsNotFoundError",
    "DataNotFoundError",
    "CostModelError",
    "ExperimentalWarning",
    "InputWarning",
]


class HawqSearchError(Exception):
    """Root of every error raised on purpose by hawq-search."""


class UserInputError(HawqSearchError, ValueError):
    """Bad input from the user: the message says what is wrong and what to do.

    Messages name arguments as the library spells them (``budget_mb``); ``params`` lists the
    names a message uses, so a front end can show its own spelling (the CLI shows
    ``--budget-mb``) without guessing which words are argument names.
    """

    def __init__(self, message: str = "", *, params: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


class UnsupportedModelError(UserInputError):
    """The model cannot be traced or has no quantizable layers."""


class UnsupportedLayerError(UserInputError):
    """A layer type the quantizers do not handle."""


class InfeasibleBudgetError(UserInputError):
    """No plan meets the budgets; the message names the binding budget and the reachable minimum."""


class PlanMismatchError(UserInputError):
    """A plan does not fit the model it is applied to (names, shapes)."""


class PlanVersionError(UserInputError):
    """A plan file has an unknown ``schema_version``."""


class WeightsNotFoundError(UserInputError):
    """Pretrained weights are neither in a local directory nor downloadable."""


class DataNotFoundError(UserInputError):
    """A data set is neither in the data directory nor downloadable."""


class CostModelError(UserInputError):
    """A cost model, profile or cost table is invalid."""


class InputWarning(UserWarning):
    """Input that works but likely not as meant; ``params`` as in :class:`UserInputError`."""

    def __init__(self, message: str = "", *, params: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


class ExperimentalWarning(UserWarning):
    """Issued when an experimental feature is used."""
