"""Sensitivity estimators: predicted loss increase per channel and bit option."""

from hawq_search.sensitivity.calibration import act_clips, collect_act_stats
from hawq_search.sensitivity.fisher import fisher_sensitivity, per_sample_grads, weight_deltas
from hawq_search.sensitivity.hessian import hessian_sensitivity, hutchinson_traces
from hawq_search.sensitivity.table import SensitivityTable

__all__ = [
    "SensitivityTable",
    "act_clips",
    "collect_act_stats",
    "fisher_sensitivity",
    "hessian_sensitivity",
    "hutchinson_traces",
    "per_sample_grads",
    "weight_deltas",
]
