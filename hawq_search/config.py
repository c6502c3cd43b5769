"""Every option of a run, validated in library terms (argument names, not flags).

Torch-free, so the CLI can build its options (and answer ``--help``) without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hawq_search.core.bits import ALLOWED_BITS
from hawq_search.core.exceptions import UserInputError

__all__ = [
    "DATASETS",
    "OBJECTIVES",
    "PRECISIONS",
    "RunConfig",
    "SAMPLERS",
    "SEARCHES",
    "SENSITIVITY_METHODS",
    "TRADEOFFS",
    "config_dict",
]

# "hessian" is Hutchinson on weights, the Fisher estimate on activations. The Fisher variants are
# defined in hawq_search.sensitivity.fisher.METHODS (a test keeps the two lists in step).
SENSITIVITY_METHODS = ("fisher", "empirical-fisher", "fisher-diag", "sampled-fisher", "hessian")
SEARCHES = ("ilp", "optuna")  # solvers by name; any searches.BaseSearch can be passed to the API
OBJECTIVES = ("measured", "proxy")  # what an Optuna trial minimises
TRADEOFFS = ("size", "bops", "latency", "energy")  # resources a multi-objective study trades
SAMPLERS = ("tpe", "nsga2", "random")  # searches.optuna_search.SAMPLERS (a test keeps them equal)
DATASETS = ("cifar10", "cifar100", "imagefolder")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    """Every option of a run; the CLI fills it, library users may too."""

    model: str = "resnet56"
    checkpoint: str | None = None
    trust_checkpoint: bool = False  # unpickle a checkpoint's Python objects (runs its code)
    weights_dir: str | None = None
    dataset: str | None = None  # default: the dataset the model's weights were trained on
    data_dir: str | None = None
    calib_size: int = 512
    eval_size: int = 0  # 0 = the whole test split
    wbits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    abits: tuple[int, ...] = (8,)
    granularity: str = "channel"
    sensitivity: str = "fisher"
    search: str = "ilp"
    budget_mb: float | None = None
    bops: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int, int] | None = None  # C, H, W; default: the model's or dataset's
    seed: int = 0
    out: str | None = None
    batch_size: int = 128
    num_workers: int = 0  # DataLoader workers for calibration and evaluation
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto, fp32, bf16, fp16 (autocast of sensitivity passes)
    threads: int | None = None  # torch threads; None = torch's default (OMP_NUM_THREADS)
    time_limit_s: float = 60.0
    mip_gap: float = 1e-4  # relative gap on the predicted loss increase
    hessian_probes: int = 100
    bn_correction: bool = True
    accelerator: str | None = None  # built-in profile name or profile YAML path
    accel_batch: int | None = None  # overrides the profile's batch size
    latency_ms: float | None = None
    energy_mj: float | None = None
    progress: bool = True
    # Optuna search and re-ranking (measured on held-out train images, never the test split)
    trials: int = 100
    objective: str = "measured"
    tradeoff: str | None = None  # a resource for a multi-objective study
    sampler: str = "tpe"
    storage: str | None = None  # Optuna RDB URL; default: sqlite study.db in the run directory
    study: str | None = None  # study name; default: "hawq-search"
    workers: int = 1  # Optuna worker processes on this machine
    resume: bool = False  # continue an existing study
    search_timeout_s: float | None = None
    rerank: int = 0  # measure the ILP's K best distinct plans and keep the best (0/1: off)
    heldout_size: int = 1000  # train images after the calibration ones, for measured objectives

    @property
    def size_budget_bytes(self) -> float | None:
        return None if self.budget_mb is None else self.budget_mb * 1e6

    @property
    def latency_budget_s(self) -> float | None:
        return None if self.latency_ms is None else self.latency_ms / 1e3

    @property
    def energy_budget_j(self) -> float | None:
        return None if self.energy_mj is None else self.energy_mj / 1e3

    def validate(self) -> None:
        """Raise :class:`UserInputError` naming the first invalid argument."""
        _check_bits("wbits", self.wbits)
        _check_bits("abits", self.abits)
        _check_choice("sensitivity", self.sensitivity, SENSITIVITY_METHODS)
        if ":" not in self.search:  # package.module:Class names a user's BaseSearch
            _check_choice("search", self.search, SEARCHES)
        if self.dataset is not None:
            _check_choice("dataset", self.dataset, DATASETS)
        from hawq_search.problem_builder import parse_granularity

        parse_granularity(self.granularity)
        _check_int("calib_size", self.calib_size, 1)
        _check_int("eval_size", self.eval_size, 0, "(0 = all)")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("hessian_probes", self.hessian_probes, 1)
        self._validate_search()
        _check_choice("precision", self.precision, PRECISIONS)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        if self.accel_batch is not None:
            _check_int("accel_batch", self.accel_batch, 1)
        for name in ("budget_mb", "bops", "latency_ms", "energy_mj", "time_limit_s"):
            _check_positive(name, getattr(self, name))
        if not 0 <= self.mip_gap < 1:
            raise UserInputError(
                f"mip_gap must be in [0, 1), got {self.mip_gap}", params=("mip_gap",)
            )
        if (self.latency_ms is not None or self.energy_mj is not None) and not self.accelerator:
            raise UserInputError(
                "latency_ms and energy_mj need an accelerator (a built-in profile name or a "
                "profile YAML path) to price layers",
                params=("latency_ms", "energy_mj", "accelerator"),
            )
        if (self.mean is None) != (self.std is None):
            raise UserInputError(
                "mean and std go together: give both or neither", params=("mean", "std")
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and not all(math.isfinite(v) for v in values):
                raise UserInputError(f"{name} values must be finite, got {values}", params=(name,))
        if self.input_size is not None and (
            len(self.input_size) != 3 or any(int(v) != v or v < 1 for v in self.input_size)
        ):
            raise UserInputError(
                f"input_size must be three integers C,H,W >= 1, got {self.input_size}",
                params=("input_size",),
            )
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserInputError(f"std values must be > 0, got {self.std}", params=("std",))

    def _validate_search(self) -> None:
        _check_int("trials", self.trials, 1)
        _check_int("workers", self.workers, 1)
        _check_int("rerank", self.rerank, 0)
        _check_int("heldout_size", self.heldout_size, 1)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_positive("search_timeout_s", self.search_timeout_s)
        if self.tradeoff is not None:
            _check_choice("tradeoff", self.tradeoff, TRADEOFFS)
            budget = {"size": "budget_mb", "bops": "bops", "latency": "latency_ms",
                      "energy": "energy_mj"}[self.tradeoff]  # fmt: skip
            if getattr(self, budget) is None:
                raise UserInputError(
                    f"tradeoff {self.tradeoff} needs a {budget} budget: the study trades "
                    "measured loss against that resource below its budget",
                    params=("tradeoff", budget),
                )
        optuna_only = {"tradeoff": self.tradeoff is not None, "workers": self.workers > 1,
                       "resume": self.resume, "storage": self.storage is not None,
                       "study": self.study is not None}  # fmt: skip
        used = [name for name, on in optuna_only.items() if on]
        if used and self.search != "optuna":
            raise UserInputError(
                f"{', '.join(used)} apply to search optuna only, not to search {self.search}",
                params=(*used, "search"),
            )
        if self.rerank > 1 and self.search != "ilp":
            raise UserInputError(
                "rerank re-ranks the ILP's best plans: it needs search ilp",
                params=("rerank", "search"),
            )


def _check_bits(name: str, bits: tuple[int, ...]) -> None:
    if not bits:
        raise UserInputError(
            f"{name} is empty: give bit options such as 2,3,4,5,6,8", params=(name,)
        )
    bad = [b for b in bits if b not in ALLOWED_BITS]
    if bad:
        raise UserInputError(
            f"{name} has {bad}: options are 2..8, 16 and 32 (unquantized)", params=(name,)
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"{name} {value!r} is not one of {', '.join(choices)}", params=(name,))


def _check_int(name: str, value: int, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserInputError(
            f"{name} must be an integer >= {low}{' ' + note if note else ''}, got {value!r}",
            params=(name,),
        )


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserInputError(f"{name} must be a finite number > 0, got {value}", params=(name,))


def config_dict(config: RunConfig) -> dict:
    """The configuration as JSON-ready data (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
