"""hawq-search: hardware-aware mixed-precision bit-width search for CNNs.

Fisher sensitivities and a size/BOPs (or accelerator) cost model feed an exact ILP over
per-channel bit-widths; the resulting :class:`Plan` turns a float model into a fake-quantized one
with :func:`apply_plan`, ready for PTQ evaluation or the user's own training loop.
"""

__version__ = "0.1.0"

from hawq_search.exceptions import HawqSearchError, UserInputError  # noqa: E402
from hawq_search.models import create_model, list_models  # noqa: E402
from hawq_search.plan import Plan, apply_plan  # noqa: E402

__all__ = [
    "HawqSearchError",
    "Plan",
    "UserInputError",
    "__version__",
    "apply_plan",
    "create_model",
    "list_models",
]
