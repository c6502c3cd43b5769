"""Hardware cost models: per-layer latency, energy and size at each (w_bits, a_bits).

Start with :func:`load_accelerator` (a built-in name from :func:`list_accelerators` or a profile
YAML path), then price layers with :meth:`CostModel.layer_cost`; see ``PROFILE_FORMAT.md``.
"""

from __future__ import annotations

from cost_models.analytic import (
    AnalyticModel,
    BitFusionModel,
    BitSerialModel,
    CPUModel,
    FixedNPUModel,
    GPUTensorCoreModel,
    MacEnergy,
    MemoryLevel,
    bitfusion_perf_factor,
)
from cost_models.base import Cost, CostModel
from cost_models.profile import load_profile, model_from_dict
from cost_models.registry import list_accelerators, load_accelerator
from cost_models.size import channel_bits_cost, layer_bops, layer_weight_bytes
from cost_models.table import CostTable, TableCostModel, load_cost_table, write_cost_table

__all__ = [
    "Cost",
    "CostModel",
    "AnalyticModel",
    "BitSerialModel",
    "BitFusionModel",
    "FixedNPUModel",
    "GPUTensorCoreModel",
    "CPUModel",
    "MemoryLevel",
    "MacEnergy",
    "bitfusion_perf_factor",
    "CostTable",
    "TableCostModel",
    "load_cost_table",
    "write_cost_table",
    "load_profile",
    "model_from_dict",
    "list_accelerators",
    "load_accelerator",
    "channel_bits_cost",
    "layer_weight_bytes",
    "layer_bops",
]
