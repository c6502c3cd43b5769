"""Datasets and in-memory calibration / evaluation subsets."""

from hawq_search.data.datasets import DATASETS, TensorData, build_transform, load_split, load_subset

__all__ = ["DATASETS", "TensorData", "build_transform", "load_split", "load_subset"]
