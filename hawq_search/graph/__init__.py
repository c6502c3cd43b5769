"""torch.fx tracing into a networkx graph of quantizable layers."""

from hawq_search.core.layers import LayerInfo
from hawq_search.graph.trace import QUANTIZABLE, ModelGraph, trace_model

__all__ = ["LayerInfo", "ModelGraph", "QUANTIZABLE", "trace_model"]
