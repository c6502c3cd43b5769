"""The inputs of a run: the model with its preprocessing, and the seeded calibration and
evaluation subsets (calibration from the train split, evaluation from the test split)."""

from __future__ import annotations

from dataclasses import replace

from hawq_search.config import RunConfig
from hawq_search.data.datasets import StreamData, TensorData, load_subset
from hawq_search.models.registry import LoadedModel, create_model, get_model_spec
from hawq_search.models.weights import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Preprocess,
)

__all__ = ["load_model", "dataset_name", "calibration_data", "evaluation_data", "heldout_data"]


def load_model(config: RunConfig) -> LoadedModel:
    """The configured model. A user factory reads the dataset's statistics and image size unless
    ``mean``/``std`` and ``input_size`` say otherwise; both also override a registered model's."""
    return create_model(
        config.model, checkpoint=config.checkpoint, weights_dir=config.weights_dir,
        preprocess=_preprocess(config), trust_checkpoint=config.trust_checkpoint,
    )  # fmt: skip


def _preprocess(config: RunConfig) -> Preprocess | None:
    """The input pipeline the options ask for; None keeps a registered model's own."""
    if ":" in config.model:
        mean, std = _dataset_stats(dataset_name(config, None))
        base = Preprocess(mean=mean, std=std, input_size=_dataset_input_size(config))
    elif config.mean is not None or config.input_size is not None:
        base = get_model_spec(config.model).preprocess
    else:
        return None
    if config.mean is not None:
        base = replace(base, mean=tuple(config.mean), std=tuple(config.std))
    if config.input_size is not None:
        base = replace(base, input_size=tuple(config.input_size), resize=None, crop=None)
    return base


def dataset_name(config: RunConfig, loaded: LoadedModel | None) -> str:
    """The configured dataset, else the one the model's weights were trained on."""
    if config.dataset:
        return config.dataset
    if loaded is not None and loaded.dataset in ("cifar10", "cifar100"):
        return loaded.dataset
    if loaded is not None and loaded.dataset == "imagenet":
        return "imagefolder"
    return "cifar10"


def calibration_data(config: RunConfig, loaded: LoadedModel) -> TensorData:
    """``calib_size`` seeded train images, held in memory: every stage reuses them."""
    return _train_subset(config, loaded, config.calib_size, "calib_size", skip=0)


def heldout_data(config: RunConfig, loaded: LoadedModel) -> TensorData:
    """``heldout_size`` seeded train images disjoint from the calibration ones (the next ones of
    the same permutation), in memory: measured search objectives score every trial on them, so
    the search never sees the test split."""
    return _train_subset(config, loaded, config.heldout_size, "heldout_size", config.calib_size)


def _train_subset(config, loaded, size: int, param: str, skip: int) -> TensorData:
    return load_subset(
        dataset_name(config, loaded), config.data_dir, "train", loaded.preprocess, size,
        config.seed, progress=config.progress, num_workers=config.num_workers,
        max_classes=loaded.num_classes, size_param=param, skip=skip,
    )  # fmt: skip


def evaluation_data(config: RunConfig, loaded: LoadedModel) -> StreamData:
    """``eval_size`` seeded test images (0 = all), streamed batch by batch."""
    return load_subset(
        dataset_name(config, loaded),
        config.data_dir,
        "test",
        loaded.preprocess,
        config.eval_size,
        config.seed,
        in_memory=False,
        num_workers=config.num_workers,
        max_classes=loaded.num_classes,
        size_param="eval_size",
    )


def _dataset_input_size(config: RunConfig) -> tuple[int, int, int]:
    """3,32,32 for CIFAR; for an image folder, the size of its first training image."""
    if dataset_name(config, None) != "imagefolder":
        return (3, 32, 32)
    from hawq_search.data.datasets import first_image_size

    return first_image_size(config.data_dir, "train")


def _dataset_stats(name: str) -> tuple[tuple, tuple]:
    if name == "cifar100":
        return CIFAR100_MEAN, CIFAR100_STD
    return CIFAR10_MEAN, CIFAR10_STD
