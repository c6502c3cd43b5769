"""Model registry: built-in CIFAR ResNets, torchvision classifiers, and user factories.

``create_model("resnet56")`` builds the network, loads its pretrained weights (local directory
first, download second) and returns it with the preprocessing those weights expect. A user
model is named ``package.module:factory`` and loaded from ``checkpoint``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from hawq_search.core.exceptions import UserInputError
from hawq_search.models.cifar_resnet import cifar_resnet
from hawq_search.models.weights import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    Weights,
    load_checkpoint,
    load_into,
    resolve_weights_file,
)
from hawq_search.user_code import import_object

__all__ = [
    "ModelSpec",
    "LoadedModel",
    "register_model",
    "list_models",
    "get_model_spec",
    "create_model",
]

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_CIFAR_PRE = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(3, 32, 32))
_IMAGENET_PRE = Preprocess(
    mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(3, 224, 224), resize=256, crop=224
)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered architecture and which checkpoint it ships with."""

    name: str
    builder: Callable[..., nn.Module]
    num_classes: int
    dataset: str  # the dataset its weights were trained on
    weights: Weights | None
    preprocess: Preprocess


@dataclass
class LoadedModel:
    """A ready model plus what the rest of the pipeline needs to know about it."""

    model: nn.Module
    model_id: str
    preprocess: Preprocess
    num_classes: int
    dataset: str | None
    weights_source: str | None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserInputError(
            f"unknown model {name!r}: choose one of {', '.join(list_models())} "
            "or give a user model as package.module:factory"
        ) from None


_CIFAR_SHA = {
    20: "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    32: "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    44: "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    56: "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
}
# Top-1 on the CIFAR-10 test set as published with the checkpoints (akamaster README).
_CIFAR_TOP1 = {20: 91.73, 32: 92.63, 44: 93.10, 56: 93.39}

for _depth, _sha in _CIFAR_SHA.items():
    register_model(
        ModelSpec(
            name=f"resnet{_depth}",
            builder=partial(cifar_resnet, _depth),
            num_classes=10,
            dataset="cifar10",
            weights=Weights(
                url=f"{_AKAMASTER}resnet{_depth}-{_sha[:8]}.th",
                sha256=_sha,
                preprocess=_CIFAR_PRE,
                meta={"dataset": "cifar10", "top1": _CIFAR_TOP1[_depth], "license": "BSD-2-Clause"},
            ),
            preprocess=_CIFAR_PRE,
        )
    )


def _torchvision_spec(name: str, enum_name: str) -> ModelSpec:
    import torchvision.models as tvm

    enum = getattr(tvm, enum_name).DEFAULT
    t = enum.transforms()
    pre = Preprocess(
        mean=tuple(t.mean),
        std=tuple(t.std),
        input_size=(3, t.crop_size[0], t.crop_size[0]),
        resize=t.resize_size[0],
        crop=t.crop_size[0],
    )
    return ModelSpec(
        name=name,
        builder=getattr(tvm, name),
        num_classes=len(enum.meta["categories"]),
        dataset="imagenet",
        weights=Weights(url=enum.url, sha256=None, preprocess=pre, meta=dict(enum.meta)),
        preprocess=pre,
    )


for _name, _enum in (
    ("resnet18", "ResNet18_Weights"),
    ("resnet50", "ResNet50_Weights"),
    ("mobilenet_v2", "MobileNet_V2_Weights"),
    ("mobilenet_v3_small", "MobileNet_V3_Small_Weights"),
    ("efficientnet_b0", "EfficientNet_B0_Weights"),
):
    register_model(_torchvision_spec(_name, _enum))


def _build_user_model(target: str, num_classes: int | None) -> nn.Module:
    factory = import_object(target, "user model", "model")
    if not callable(factory):
        raise UserInputError(f"{target} is not callable: name the model factory", params=("model",))
    try:
        model = factory(num_classes=num_classes) if num_classes else factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UserInputError(
            f"the model factory {target} raised {type(exc).__name__}: {exc}", params=("model",)
        ) from None
    if not isinstance(model, nn.Module):
        raise UserInputError(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def create_model(
    name: str,
    *,
    pretrained: bool = True,
    checkpoint: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    preprocess: Preprocess | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Build ``name`` in eval mode with its weights.

    Args:
        name: a registered name (see :func:`list_models`) or ``package.module:factory``.
        pretrained: load the registered checkpoint (ignored when ``checkpoint`` is given).
        checkpoint: a local file to load instead (plain state_dict, dict with ``state_dict``,
            ``module.`` prefixes are stripped).
        weights_dir: directory searched first for registered checkpoints.
        num_classes: passed to user factories.
        preprocess: overrides the input normalisation (required for user models unless the
            caller falls back to dataset statistics).
        trust_checkpoint: allow a ``checkpoint`` that needs Python's full unpickler, which can
            run any code the file contains (default: tensors only).
    """
    if ":" in name:
        model = _build_user_model(name, num_classes)
        source = None
        if checkpoint is not None:
            load_into(model, load_checkpoint(checkpoint, trust=trust_checkpoint), str(checkpoint))
            source = str(checkpoint)
        pre = preprocess or Preprocess(mean=CIFAR10_MEAN, std=CIFAR10_STD)
        classes = num_classes or _infer_num_classes(model)
        return LoadedModel(model.eval(), name, pre, classes, None, source)

    spec = get_model_spec(name)
    model = spec.builder(num_classes=spec.num_classes)
    source = None
    if checkpoint is not None:
        load_into(model, load_checkpoint(checkpoint, trust=trust_checkpoint), str(checkpoint))
        source = str(checkpoint)
    elif pretrained and spec.weights is not None:
        path = resolve_weights_file(spec.weights, weights_dir)
        load_into(model, load_checkpoint(path), str(path))
        source = spec.weights.url
    pre = preprocess or spec.preprocess
    return LoadedModel(model.eval(), name, pre, spec.num_classes, spec.dataset, source)


def _infer_num_classes(model: nn.Module) -> int:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else 0


def input_example(pre: Preprocess, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, *pre.input_size)
