"""hawq-search: hardware-aware mixed-precision bit-width search for CNNs.

Fisher sensitivities and a size/BOPs (or accelerator) cost model feed an exact ILP over
per-channel bit-widths; the resulting :class:`Plan` turns a float model into a fake-quantized one
with :func:`apply_plan`, ready for PTQ evaluation or the user's own training loop.
"""

__version__ = "0.1.0"

from hawq_search.exceptions import HawqSearchError, UserInputError  # noqa: E402

_LAZY = {
    "create_model": "hawq_search.models",
    "list_models": "hawq_search.models",
    "Plan": "hawq_search.plan",
    "apply_plan": "hawq_search.plan",
}


def __getattr__(name: str):
    # Imported on first use: cost_models imports hawq_search.graph, and an eager import of
    # hawq_search.plan here (which imports cost_models) would make that a cycle.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hawq_search' has no attribute {name!r}")


__all__ = [
    "HawqSearchError",
    "Plan",
    "UserInputError",
    "__version__",
    "apply_plan",
    "create_model",
    "list_models",
]
