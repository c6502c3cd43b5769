"""hawq-search: hardware-aware mixed-precision bit-width search for CNNs.

Fisher sensitivities and a size/BOPs (or accelerator) cost model feed an exact ILP over
per-channel bit-widths; :func:`search_plan` returns the :class:`Plan`, and :func:`apply_plan`
turns a float model into a fake-quantized one for PTQ evaluation or the user's own training.

Names other than the exceptions are imported on first use (PEP 562): ``hawq_search.core``, the
torch-free vocabulary that ``cost_models`` and ``searches`` build on, must stay importable
without torch, and importing it runs this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from hawq_search.core.exceptions import (  # noqa: E402
    HawqSearchError,
    InfeasibleBudgetError,
    PlanMismatchError,
    UserInputError,
)

_LAZY = {
    "search_plan": "hawq_search.api",
    "finetune": "hawq_search.api",
    "create_model": "hawq_search.models",
    "list_models": "hawq_search.models",
    "Plan": "hawq_search.plan",
    "apply_plan": "hawq_search.plan",
    "RunConfig": "hawq_search.config",
    "Pipeline": "hawq_search.pipeline",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from hawq_search.api import finetune, search_plan
    from hawq_search.config import RunConfig
    from hawq_search.models import create_model, list_models
    from hawq_search.pipeline import Pipeline
    from hawq_search.plan import Plan, apply_plan


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hawq_search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "HawqSearchError",
    "InfeasibleBudgetError",
    "Pipeline",
    "Plan",
    "PlanMismatchError",
    "RunConfig",
    "UserInputError",
    "__version__",
    "apply_plan",
    "create_model",
    "finetune",
    "list_models",
    "search_plan",
]
