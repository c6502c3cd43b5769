"""Datasets, seeded calibration / evaluation subsets (in memory or streamed) and user batches."""

from hawq_search.data.datasets import (
    DATASETS,
    Batches,
    StreamData,
    TensorData,
    build_transform,
    from_batches,
    load_split,
    load_subset,
    subset_indices,
)

__all__ = [
    "DATASETS",
    "Batches",
    "StreamData",
    "TensorData",
    "build_transform",
    "from_batches",
    "load_split",
    "load_subset",
    "subset_indices",
]
