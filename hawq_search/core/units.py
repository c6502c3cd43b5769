"""Units of the budgeted resources: what the solvers count in (SI base units) and how a value
is shown to a person. Solvers and cost models work in bytes, bit-operations, seconds and joules;
users state budgets in MB (10**6 bytes), BOPs, milliseconds and millijoules."""

from __future__ import annotations

__all__ = ["BUDGET_UNITS", "MB", "format_budget"]

MB = 1e6  # bytes in one MB of a size budget (not MiB)

# resource name -> (unit the solvers count in, unit users give budgets in, user units per base unit)
BUDGET_UNITS: dict[str, tuple[str, str, float]] = {
    "size": ("bytes", "MB", 1 / MB),
    "bops": ("bit-ops", "BOPs", 1.0),
    "latency": ("s", "ms", 1e3),
    "energy": ("J", "mJ", 1e3),
}


def format_budget(name: str, value: float) -> str:
    """``value`` (in the solvers' unit) as a person reads it, e.g. ``0.500000 MB (500000 bytes)``."""
    if name == "size":
        return f"{value / MB:.6f} MB ({value:.0f} bytes)"
    if name == "bops":
        return f"{value:.4g} BOPs"
    if name in BUDGET_UNITS:
        _, unit, factor = BUDGET_UNITS[name]
        return f"{value * factor:.6g} {unit}"
    return f"{value:.6g}"
