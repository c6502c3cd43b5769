"""The Python API for users' own models and data: :func:`search_plan` and :func:`finetune`."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from hawq_search.config import RunConfig
from hawq_search.core.exceptions import UserInputError
from hawq_search.data.datasets import TensorData, from_batches
from hawq_search.models.registry import LoadedModel
from hawq_search.models.weights import Preprocess
from hawq_search.pipeline import Pipeline
from hawq_search.plan import Plan
from hawq_search.sensitivity.fisher import LossFn
from searches import BaseSearch

__all__ = ["finetune", "search_plan"]


def search_plan(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    budget_mb: float | None = None,
    bops: float | None = None,
    latency_ms: float | None = None,
    energy_mj: float | None = None,
    accelerator: str | None = None,
    accel_batch: int | None = None,
    wbits: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
    abits: tuple[int, ...] = (8,),
    granularity: str = "channel",
    sensitivity: str = "fisher",
    search: str | BaseSearch = "ilp",
    example_input: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    calib_size: int = 512,
    batch_size: int = 128,
    seed: int = 0,
    time_limit_s: float = 60.0,
    mip_gap: float = 1e-4,
    cache_dir: str | None = None,
    progress: bool = False,
    rerank: int = 0,
    trials: int = 100,
    objective: str = "measured",
    heldout_size: int = 1000,
    storage: str | None = None,
) -> Plan:
    """Search the per-channel bit-width plan of ``model`` under the given budgets.

    Args:
        model: any ``nn.Module`` whose Conv2d/Linear layers should be quantized; not modified.
        data: an iterable of ``(inputs, targets)`` batches (a ``DataLoader`` included); the
            first ``calib_size`` samples calibrate activations and estimate sensitivities.
        budget_mb, bops, latency_ms, energy_mj: budgets (MB = 10**6 bytes of stored weights;
            bit-operations per image; latency and energy per batch on ``accelerator``).
        accelerator: a built-in profile name (``cost_models.list_accelerators()``) or a
            profile YAML path; needed for latency and energy budgets.
        wbits, abits: bit options (16/32 = unquantized; ``abits=(32,)`` = weights only).
        granularity: ``"channel"``, ``"layer"`` or ``"group:N"``.
        sensitivity: ``fisher`` (default), ``empirical-fisher``, ``fisher-diag``,
            ``sampled-fisher`` or ``hessian``.
        search: ``"ilp"``, ``"optuna"`` (``trials`` trials on the ``objective``: "measured"
            PTQ loss or the "proxy"; a study in ``storage``, an Optuna RDB URL, else in memory)
            or any :class:`searches.BaseSearch` instance.
        rerank: measure the ILP's ``rerank`` best distinct plans and keep the best.
        heldout_size: samples of ``data`` after the first ``calib_size`` that measured
            objectives (``rerank``, ``search="optuna"``) score plans on.
        example_input: an input batch to trace the model with (default: one sample of ``data``).
        loss_fn: ``(outputs, targets) -> loss`` replacing cross-entropy (per-sample values or
            their mean); with it, label-sampling estimators use the true targets.
        cache_dir: a directory to cache sensitivity tables in (default: no cache).

    Returns:
        The :class:`~hawq_search.plan.Plan`; ``apply_plan(model, plan)`` quantizes the model
        and ``plan.save(path)`` writes ``plan.json``.

    Raises:
        UserInputError: bad arguments or data; ``InfeasibleBudgetError`` (a subclass) when no
            plan meets the budgets, with the smallest reachable value.
    """
    if not isinstance(model, nn.Module):
        raise UserInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(search, (str, BaseSearch)):
        raise UserInputError(
            f"search must be 'ilp', 'optuna' or a searches.BaseSearch, got {type(search).__name__}",
            params=("search",),
        )
    config = RunConfig(
        model=f"python:{type(model).__name__}", wbits=tuple(sorted(set(wbits))),
        abits=tuple(sorted(set(abits))), granularity=granularity, sensitivity=sensitivity,
        search=search if isinstance(search, str) else "ilp", budget_mb=budget_mb, bops=bops,
        latency_ms=latency_ms, energy_mj=energy_mj, accelerator=accelerator,
        accel_batch=accel_batch, calib_size=calib_size, batch_size=batch_size, seed=seed,
        time_limit_s=time_limit_s, mip_gap=mip_gap, out=cache_dir, progress=progress,
        rerank=rerank, trials=trials, objective=objective, heldout_size=heldout_size,
        storage=storage,
    )  # fmt: skip
    config.validate()
    measuring = rerank > 1 or (config.search == "optuna" and objective == "measured")
    samples = from_batches(data, calib_size + (heldout_size if measuring else 0), "user data")
    calib, heldout = _split(samples, calib_size, measuring)
    example = example_input if example_input is not None else calib.images[:1]
    loaded = _describe(model, example)
    pipe = Pipeline(
        config, model=loaded, calib=calib, example_input=example, loss_fn=loss_fn,
        search=search if isinstance(search, BaseSearch) else None, heldout=heldout,
    )  # fmt: skip
    plan, _ = pipe.search()
    return plan


def _split(samples: TensorData, calib_size: int, measuring: bool):
    """Calibration samples, and the held-out ones after them (None when nothing measures)."""
    if not measuring:
        return samples, None
    if len(samples) <= calib_size:
        raise UserInputError(
            f"data has {len(samples)} samples: measured objectives need samples beyond the "
            f"{calib_size} calibration ones (heldout_size more)",
            params=("heldout_size", "calib_size"),
        )
    part = [TensorData(samples.images[a:b], samples.labels[a:b], list(samples.indices[a:b]),
                       samples.source) for a, b in ((0, calib_size), (calib_size, len(samples)))]  # fmt: skip
    return part[0], part[1]


def _describe(model: nn.Module, example: torch.Tensor) -> LoadedModel:
    """The model as the pipeline sees a loaded one: its input shape and number of outputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:  # noqa: BLE001 - the user's model or input is wrong
        raise UserInputError(
            f"the model fails on an input of shape {tuple(example.shape)} ({type(exc).__name__}: "
            f"{exc}): pass example_input with the shape the model expects",
            params=("example_input",),
        ) from None
    finally:
        model.train(was_training)
    num_classes = int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 1 else 0
    # The model consumes data as given: no preprocessing of ours applies (identity statistics).
    channels = example.shape[1] if example.dim() > 1 else 1
    pre = Preprocess(
        mean=(0.0,) * channels, std=(1.0,) * channels, input_size=tuple(example.shape[1:])
    )
    return LoadedModel(model, f"python:{type(model).__name__}", pre, num_classes, None, "python")


def finetune(
    model: nn.Module,
    plan: Plan,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    out: str,
    eval_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    calib_size: int = 512,
    train_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    **options,
) -> tuple[nn.Module, Plan]:
    """Quantization-aware fine-tuning of ``plan`` on ``model`` (not modified).

    ``data`` yields ``(inputs, targets)`` training batches (the first ``train_size`` samples,
    all by default, are used; the first ``calib_size`` also give the sensitivities that order
    the gradual schedule); ``eval_data`` scores top-1 before and after (default: the
    calibration samples). ``options`` are :class:`hawq_search.training.options.FinetuneOptions`
    fields (``schedule``, ``order``, ``lr``, ``batch_size``, ``resume``, ...). The run directory
    ``out`` receives the checkpoints, ``finetuned.pt``, ``plan.json`` and ``summary.json``.

    Returns the trained float model and the fine-tuned plan: ``apply_plan(model, plan)``
    rebuilds the trained quantized model exactly.
    """
    from hawq_search.training.finetune import finetune_job
    from hawq_search.training.options import FinetuneOptions

    if not isinstance(model, nn.Module):
        raise UserInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opts = FinetuneOptions(epochs=epochs, **options)
    opts.validate()
    train = from_batches(data, train_size, "training data")
    calib = TensorData(train.images[:calib_size], train.labels[:calib_size],
                       list(range(min(calib_size, len(train)))), train.source)  # fmt: skip
    wbits = sorted({b for lp in plan.layers for b in lp.w_bits})
    abits = sorted({lp.a_bits for lp in plan.layers})
    config = RunConfig(model=f"python:{type(model).__name__}", wbits=tuple(wbits),
                       abits=tuple(abits), calib_size=len(calib), out=out, progress=progress,
                       device=device, precision=precision, seed=opts.seed)  # fmt: skip
    evaluation = from_batches(eval_data, None, "evaluation data") if eval_data else calib
    example = calib.images[:1]
    with Pipeline(config, model=_describe(model, example), calib=calib, eval_data=evaluation,
                  example_input=example) as pipe:  # fmt: skip
        finetune_job(pipe, plan, opts, train_data=train)
        trained = Plan.load(pipe.out / "plan.json")
        result = copy.deepcopy(model)
        result.load_state_dict(torch.load(pipe.out / "finetuned.pt", weights_only=True))
    return result, trained
