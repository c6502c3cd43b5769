"""Model registry, builders and pretrained weights."""

from hawq_search.models.registry import (
    LoadedModel,
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from hawq_search.models.weights import Preprocess, Weights

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "Preprocess",
    "Weights",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
