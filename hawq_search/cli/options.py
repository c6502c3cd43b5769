"""Option groups shared by the sub-commands, and the parsers behind them."""

from __future__ import annotations

import functools
import math

import click

from hawq_search.config import (
    DATASETS,
    OBJECTIVES,
    PRECISIONS,
    SAMPLERS,
    SENSITIVITY_METHODS,
    TRADEOFFS,
    RunConfig,
)


def parse_bits(ctx, param, value: str | None):
    if value is None:
        return None
    parts = [v.strip() for v in value.split(",")]
    if not all(p.isdigit() for p in parts):
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers such as 2,3,4,8"
        )
    return tuple(sorted({int(p) for p in parts}))


_WORDS = {3: "three"}


def _numbers(value: str, count: int, example: str, cast=float) -> tuple:
    try:
        parts = tuple(cast(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != count or not all(math.isfinite(v) for v in parts):
        raise click.BadParameter(
            f"{value!r} must be {_WORDS[count]} comma-separated finite numbers, e.g. {example}"
        )
    return parts


def parse_triple(ctx, param, value: str | None):
    return None if value is None else _numbers(value, 3, "0.4914,0.4822,0.4465")


def parse_input_size(ctx, param, value: str | None):
    if value is None:
        return None
    size = _numbers(value, 3, "3,32,32", cast=int)
    if min(size) < 1:
        raise click.BadParameter(f"{value!r}: every dimension must be >= 1")
    return size


def _compose(*decorators):
    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return functools.wraps(f)(f)

    return wrap


model_options = _compose(
    click.option(
        "--model",
        default="resnet56",
        show_default=True,
        help="Registered name (hawq-search models) or package.module:factory.",
    ),
    click.option(
        "--checkpoint",
        type=click.Path(dir_okay=False),
        help="Weights file to load instead of the registered checkpoint.",
    ),
    click.option(
        "--trust-checkpoint",
        is_flag=True,
        help="Load a --checkpoint that holds Python objects besides tensors. Unpickling them "
        "runs whatever code the file contains: only for files you trust.",
    ),
    click.option(
        "--weights-dir",
        type=click.Path(file_okay=False),
        help="Directory searched first for registered checkpoints (env HAWQ_SEARCH_WEIGHTS).",
    ),
    click.option(
        "--dataset",
        type=click.Choice(DATASETS),
        help="Default: the dataset the model's weights were trained on.",
    ),
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="Dataset root (imagefolder: holds train/ and test/; env HAWQ_SEARCH_DATA).",
    ),
    click.option(
        "--calib-size",
        default=512,
        show_default=True,
        type=int,
        help="Calibration images drawn from the train split.",
    ),
    click.option(
        "--eval-size",
        default=0,
        show_default=True,
        type=int,
        help="Evaluation images drawn from the test split (0 = all).",
    ),
    click.option(
        "--wbits",
        default="2,3,4,5,6,8",
        show_default=True,
        callback=parse_bits,
        help="Weight bit options (2..8; 16/32 = unquantized).",
    ),
    click.option(
        "--abits",
        default="8",
        show_default=True,
        callback=parse_bits,
        help="Activation bit options (32 = weights only).",
    ),
    click.option(
        "--mean",
        callback=parse_triple,
        help="Input mean for user models, e.g. 0.49,0.48,0.45 (default: dataset statistics).",
    ),
    click.option("--std", callback=parse_triple, help="Input std for user models."),
    click.option(
        "--input-size",
        callback=parse_input_size,
        help="C,H,W the model reads, e.g. 3,64,64 (default: the registered model's, else the "
        "dataset's: 3,32,32 for CIFAR, the first training image's size for imagefolder).",
    ),
    click.option(
        "--seed",
        default=0,
        show_default=True,
        type=int,
        help="Seed of the data subsets and label sampling.",
    ),
    click.option(
        "--out",
        type=click.Path(file_okay=False),
        help="Run directory (default: a new folder under runs/). Reusing one resumes from its caches.",
    ),
    click.option(
        "--batch-size",
        default=128,
        show_default=True,
        type=int,
        help="Batch size of sensitivity and calibration passes.",
    ),
    click.option(
        "--num-workers",
        default=0,
        show_default=True,
        type=int,
        help="DataLoader worker processes reading and decoding images.",
    ),
    click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto, cpu, cuda, cuda:N or mps (auto: a GPU when there is one).",
    ),
    click.option(
        "--precision",
        default="auto",
        show_default=True,
        type=click.Choice(PRECISIONS),
        help="Autocast precision of sensitivity passes; auto: bf16 only where the device runs "
        "it natively, else fp32.",
    ),
    click.option(
        "--threads",
        type=int,
        help="torch threads (default: torch's own, which honours OMP_NUM_THREADS).",
    ),
    click.option("--quiet", is_flag=True, help="No progress bars."),
)

search_options = _compose(
    click.option(
        "--budget-mb",
        type=float,
        help="Stored weight size budget in MB (10^6 bytes; scales and biases included).",
    ),
    click.option(
        "--bops",
        type=float,
        help="Bit-operations budget per image (sum of MACs x w_bits x a_bits).",
    ),
    click.option(
        "--granularity",
        default="channel",
        show_default=True,
        help="channel, layer or group:N (N channels share a bit-width).",
    ),
    click.option(
        "--sensitivity",
        default="fisher",
        show_default=True,
        type=click.Choice(SENSITIVITY_METHODS),
        help="Sensitivity estimator.",
    ),
    click.option(
        "--search",
        default="ilp",
        show_default=True,
        help="Solver: ilp (exact on the predicted loss), optuna (corrects the prediction per "
        "layer by measuring plans), or package.module:Class naming your own searches.BaseSearch.",
    ),
    click.option(
        "--rerank",
        type=int,
        help="Measure the ILP's K best distinct plans on held-out train images and keep the "
        "best (search ilp).",
    ),
    click.option(
        "--trials",
        default=100,
        show_default=True,
        type=int,
        help="Complete Optuna trials the study should reach (over all workers).",
    ),
    click.option(
        "--objective",
        default="measured",
        show_default=True,
        type=click.Choice(OBJECTIVES),
        help="What an Optuna trial minimises: the PTQ loss on held-out train images, or the "
        "predicted loss increase (fast).",
    ),
    click.option(
        "--tradeoff",
        type=click.Choice(TRADEOFFS),
        help="Multi-objective study: the objective against this resource's cost (below its "
        "budget); the result is a Pareto set.",
    ),
    click.option(
        "--sampler",
        default="tpe",
        show_default=True,
        type=click.Choice(SAMPLERS),
        help="Optuna sampler (tpe is multi-objective TPE with --tradeoff).",
    ),
    click.option(
        "--storage",
        help="Optuna storage URL, e.g. postgresql+psycopg://user:pw@host/db for workers on several "
        "machines (default: sqlite study.db in the run directory).",
    ),
    click.option(
        "--study", help="Study name (default hawq-search); naming one joins it if it exists."
    ),
    click.option(
        "--workers",
        type=int,
        help="Optuna worker processes on this machine (default 1).",
    ),
    click.option("--resume", is_flag=True, help="Continue the run directory's Optuna study."),
    click.option(
        "--search-timeout", type=float, help="Stop starting Optuna trials after this many seconds."
    ),
    click.option(
        "--heldout-size",
        default=1000,
        show_default=True,
        type=int,
        help="Held-out train images (after the calibration ones) that measured objectives use.",
    ),
    click.option(
        "--hessian-probes",
        default=100,
        show_default=True,
        type=int,
        help="Maximum Hutchinson probes (--sensitivity hessian).",
    ),
    click.option(
        "--time-limit",
        default=60.0,
        show_default=True,
        type=float,
        help="ILP time limit in seconds.",
    ),
    click.option(
        "--mip-gap",
        default=1e-4,
        show_default=True,
        type=float,
        help="Relative optimality gap on the predicted loss increase at which the ILP stops.",
    ),
    click.option(
        "--accelerator", help="Built-in profile (hawq-search cost list) or a profile YAML path."
    ),
    click.option(
        "--accel-batch", type=int, help="Batch the accelerator runs (default: profile's)."
    ),
    click.option(
        "--latency-ms", type=float, help="Latency budget per batch on --accelerator (ms)."
    ),
    click.option("--energy-mj", type=float, help="Energy budget per batch on --accelerator (mJ)."),
)

eval_options = _compose(
    click.option(
        "--no-bn-correction",
        is_flag=True,
        help="Evaluate PTQ without BatchNorm statistics correction.",
    ),
)


# RunConfig field -> CLI option name, where they differ.
CONFIG_NAMES = {"time_limit_s": "time_limit", "search_timeout_s": "search_timeout"}


def build_config(**kw) -> RunConfig:
    """RunConfig from CLI keyword arguments (unknown keys are ignored); validated later."""
    c = RunConfig()
    for attr in c.__dataclass_fields__:
        key = CONFIG_NAMES.get(attr, attr)
        if kw.get(key) is not None:
            setattr(c, attr, kw[key])
    c.progress = not kw.get("quiet", False)
    c.bn_correction = not kw.get("no_bn_correction", False)
    c.trust_checkpoint = bool(kw.get("trust_checkpoint", False))
    c.resume = bool(kw.get("resume", False))
    return c


def make_pipeline(**kw):
    """The pipeline of a command, its run directory defaulting to a new folder under runs/."""
    from hawq_search.pipeline import Pipeline, new_run_dir

    config = build_config(**kw)
    if config.out is None:
        config.out = str(new_run_dir(config.model))
    return Pipeline(config)
