"""Option groups shared by the sub-commands, and the parsers behind them."""

from __future__ import annotations

import functools

import click

from hawq_search.data.datasets import DATASETS
from hawq_search.pipeline import SENSITIVITY_METHODS, RunConfig


def parse_bits(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        bits = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers such as 2,3,4,8"
        ) from None
    return bits


def parse_triple(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise click.BadParameter(
            f"{value!r} must be three comma-separated numbers, e.g. 0.4914,0.4822,0.4465"
        )
    return parts


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


def build_config(**kw) -> RunConfig:
    """RunConfig from CLI keyword arguments (unknown keys are ignored)."""
    if kw.get("batch_size") is not None and kw["batch_size"] < 1:
        raise click.BadParameter("--batch-size must be >= 1")
    if kw.get("hessian_probes") is not None and kw["hessian_probes"] < 1:
        raise click.BadParameter("--hessian-probes must be >= 1")
    if kw.get("accel_batch") is not None and kw["accel_batch"] < 1:
        raise click.BadParameter("--accel-batch must be >= 1")
    if kw.get("time_limit") is not None and not kw["time_limit"] > 0:
        raise click.BadParameter("--time-limit must be > 0")
    if kw.get("mip_gap") is not None and not 0 <= kw["mip_gap"] < 1:
        raise click.BadParameter("--mip-gap must be in [0, 1)")
    c = RunConfig()
    mapping = {
        "model": "model",
        "checkpoint": "checkpoint",
        "weights_dir": "weights_dir",
        "dataset": "dataset",
        "data_dir": "data_dir",
        "calib_size": "calib_size",
        "eval_size": "eval_size",
        "wbits": "wbits",
        "abits": "abits",
        "mean": "mean",
        "std": "std",
        "seed": "seed",
        "out": "out",
        "batch_size": "batch_size",
        "budget_mb": "budget_mb",
        "bops": "bops",
        "granularity": "granularity",
        "sensitivity": "sensitivity",
        "hessian_probes": "hessian_probes",
        "time_limit": "time_limit_s",
        "mip_gap": "mip_gap",
        "accelerator": "accelerator",
        "accel_batch": "accel_batch",
        "latency_ms": "latency_ms",
        "energy_mj": "energy_mj",
    }
    for key, attr in mapping.items():
        if key in kw and kw[key] is not None:
            setattr(c, attr, kw[key])
    c.progress = not kw.get("quiet", False)
    c.bn_correction = not kw.get("no_bn_correction", False)
    return c
