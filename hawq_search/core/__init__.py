"""The shared vocabulary at the bottom of every package: layer descriptions, bit-width rules,
exceptions and units. It imports no torch (nor anything else of hawq-search), so ``cost_models``
and ``searches`` build on it without pulling in the rest of ``hawq_search``."""

from hawq_search.core.bits import ALLOWED_BITS, QUANT_BITS, UNQUANTIZED_BITS, is_quantized
from hawq_search.core.exceptions import (
    CostModelError,
    DataNotFoundError,
    ExperimentalWarning,
    HawqSearchError,
    InfeasibleBudgetError,
    InputWarning,
    PlanMismatchError,
    PlanVersionError,
    UnsupportedLayerError,
    UnsupportedModelError,
    UserInputError,
    WeightsNotFoundError,
)
from hawq_search.core.layers import LayerInfo
from hawq_search.core.units import BUDGET_UNITS, format_budget

__all__ = [
    "ALLOWED_BITS",
    "BUDGET_UNITS",
    "QUANT_BITS",
    "UNQUANTIZED_BITS",
    "CostModelError",
    "DataNotFoundError",
    "ExperimentalWarning",
    "HawqSearchError",
    "InfeasibleBudgetError",
    "InputWarning",
    "LayerInfo",
    "PlanMismatchError",
    "PlanVersionError",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "UserInputError",
    "WeightsNotFoundError",
    "format_budget",
    "is_quantized",
]
