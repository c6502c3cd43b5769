"""The stages of a run, each computed once and handed on: model -> data -> graph -> activation
ranges -> sensitivities -> problem -> plans -> evaluations.

:class:`Pipeline` only caches; the job of each stage lives in its own module (``inputs``,
``graph.trace``, ``sensitivity.stage``, ``budgets``, ``problem_builder``, ``repricing``,
``planning``, ``ptq``, ``evaluation``). The CLI's sub-commands and :func:`hawq_search.search_plan`
share it. Stages can be handed in ready-made (a user's model and batches), and sensitivity tables
are cached in the run directory (``out``) when there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cost_models.base import CostModel
from hawq_search import budgets as budget_checks
from hawq_search.config import RunConfig
from hawq_search.core.exceptions import UserInputError
from hawq_search.data.datasets import Batches, TensorData
from hawq_search.evaluation import top1
from hawq_search.files import RunDirLock
from hawq_search.graph.trace import ModelGraph, trace_model
from hawq_search.inputs import calibration_data, evaluation_data, load_model
from hawq_search.models.registry import LoadedModel
from hawq_search.plan import Plan
from hawq_search.planning import (
    PlanContext,
    make_plan,
    plan_budgets,
    plan_from_solution,
    uniform_plan,
)
from hawq_search.problem_builder import build_problem
from hawq_search.progress import progress_bar
from hawq_search.ptq import ptq_model
from hawq_search.quant.bn import BatchMoments, batch_moments
from hawq_search.repricing import exact_hardware_totals, solve_within_exact_budgets
from hawq_search.runtime import module_device, resolve_runtime
from hawq_search.sensitivity.fisher import LossFn
from hawq_search.sensitivity.stage import SensitivityRequest, activation_ranges, sensitivity_table
from hawq_search.sensitivity.table import SensitivityTable
from hawq_search.user_code import import_object
from searches import BaseSearch, SearchProblem, SearchResult, SearchStatus

__all__ = ["Pipeline", "Timings", "make_search", "new_run_dir"]


@dataclass
class Timings:
    sensitivity: float = 0.0
    search: float = 0.0
    evaluation: float = 0.0
    other: dict = field(default_factory=dict)


def make_search(config: RunConfig) -> BaseSearch:
    """A solver that needs nothing from the pipeline: ``ilp``, or ``package.module:Class`` naming
    a :class:`searches.BaseSearch` subclass built without arguments. (Searches that measure
    plans, ``optuna`` and ``rerank``, are built by :func:`hawq_search.studies.build_search`.)"""
    from searches import IlpSearch

    if ":" not in config.search:
        return IlpSearch(time_limit=config.time_limit_s, mip_rel_gap=config.mip_gap)
    cls = import_object(config.search, "search", "search")
    if not (isinstance(cls, type) and issubclass(cls, BaseSearch)):
        raise UserInputError(
            f"search {config.search} is not a searches.BaseSearch subclass", params=("search",)
        )
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - the user's class failed
        raise UserInputError(
            f"the search {config.search} raised {type(exc).__name__} when built: {exc}",
            params=("search",),
        ) from None


class Pipeline:
    """Cached stages of one run.

    Args:
        config: every option; validated here.
        model: a ready model (skips loading ``config.model``).
        calib, eval_data: ready calibration / evaluation batches (skip loading the dataset).
        example_input: one input batch to trace the model with (default: zeros of the model's
            input size).
        loss_fn: replaces cross-entropy in sensitivities.
        search: the solver (default: from ``config.search``).
        heldout: ready held-out batches for measured objectives (default: the train images
            after the calibration ones).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        model: LoadedModel | None = None,
        calib: TensorData | None = None,
        eval_data: Batches | None = None,
        example_input: torch.Tensor | None = None,
        loss_fn: LossFn | None = None,
        search: BaseSearch | None = None,
        heldout: TensorData | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.runtime = resolve_runtime(config.device, config.precision, config.threads)
        self.out: Path | None = Path(config.out) if config.out else None
        self.timings = Timings()
        self.loss_fn = loss_fn
        self._searcher = search
        if search is None and ":" in config.search:
            self._searcher = make_search(config)  # a user's class: fail before any work
        self._measure = None
        self._heldout = heldout
        self._loaded, self._calib, self._eval = model, calib, eval_data
        self._example = example_input
        self._graph: ModelGraph | None = None
        self._ranges: tuple[dict, dict] | None = None
        self._cost_model: CostModel | None = None
        self._tables: dict[str, SensitivityTable] = {}
        self._float_moments: dict[int, BatchMoments] = {}  # by batch size; shared by variants
        self._budgets_checked = False
        self._lock: RunDirLock | None = None
        self._owns_lock = True  # a variant borrows its parent's lock on the same directory

    # ---- inputs ----------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.config)
        if module_device(self._loaded.model) != self.runtime.device:
            self._loaded.model.to(self.runtime.device)
        return self._loaded

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def calib(self) -> TensorData:
        if self._calib is None:
            self._calib = calibration_data(self.config, self.loaded)
        return self._calib

    @property
    def eval_data(self) -> Batches:
        if self._eval is None:
            self._eval = evaluation_data(self.config, self.loaded)
        return self._eval

    @property
    def graph(self) -> ModelGraph:
        if self._graph is None:
            example = self._example
            if example is None:
                example = torch.zeros(1, *self.loaded.preprocess.input_size)
            self._graph = trace_model(self.model, example.to(self.runtime.device))
        return self._graph

    def activation_ranges(self) -> tuple[dict, dict]:
        if self._ranges is None:
            self._ranges = activation_ranges(self.model, self.graph, self.calib, self.config.abits)
        return self._ranges

    @property
    def cost_model(self) -> CostModel | None:
        """The accelerator cost model, or None without an accelerator."""
        if self._cost_model is None and self.config.accelerator:
            from cost_models.registry import load_accelerator

            self._cost_model = load_accelerator(
                self.config.accelerator, batch=self.config.accel_batch
            )
        return self._cost_model

    # ---- sensitivities ---------------------------------------------------------------------
    def sensitivity(self, method: str | None = None) -> SensitivityTable:
        """The sensitivity table for ``method``, from the run directory's cache when present."""
        c = self.config
        method = method or c.sensitivity
        if method not in self._tables:
            clips, signed = self.activation_ranges()
            req = SensitivityRequest(
                method, tuple(c.wbits), tuple(c.abits), clips, signed, batch_size=c.batch_size,
                seed=c.seed, hessian_probes=c.hessian_probes, progress=c.progress,
                loss_fn=self.loss_fn, precision=self.runtime.precision,
                runtime=self.runtime.to_dict(),
            )  # fmt: skip
            self._tables[method] = sensitivity_table(
                self.model, self.graph, self.calib, req, cache_dir=self.out
            )
        return self._tables[method]

    # ---- problem and search ----------------------------------------------------------------
    @property
    def searcher(self) -> BaseSearch:
        """The configured search (built on first use: Optuna needs the run's data)."""
        if self._searcher is None:
            from hawq_search.studies import build_search

            self._searcher = build_search(self)
        return self._searcher

    @searcher.setter
    def searcher(self, search: BaseSearch) -> None:
        self._searcher = search

    @property
    def measure(self):
        """PTQ loss and top-1 of a solution on held-out train images (measured objectives)."""
        if self._measure is None:
            from hawq_search.measured import HeldoutMeasure

            self._measure = HeldoutMeasure(self, data=self._heldout)
        return self._measure

    def targets(self) -> dict[str, float | None]:
        """The user's hardware budgets in seconds and joules (re-priced exactly)."""
        return {"latency": self.config.latency_budget_s, "energy": self.config.energy_budget_j}

    def problem(self, table: SensitivityTable, hardware: dict | None = None) -> SearchProblem:
        """The search problem of ``table`` under the configured budgets (``hardware`` overrides
        the latency/energy budgets, as the re-pricing loop tightens them)."""
        c = self.config
        hw = hardware or self.targets()
        problem = build_problem(
            self.graph, table, granularity=c.granularity, size_budget_bytes=c.size_budget_bytes,
            bops_budget=c.bops, cost_model=self.cost_model, latency_budget_s=hw["latency"],
            energy_budget_j=hw["energy"],
        )  # fmt: skip
        problem.meta.update(model=c.model, sensitivity_samples=table.meta.get("samples"))
        return problem

    def check_budgets(self) -> None:
        """Fail fast on infeasible budgets, warn on non-binding ones (no sensitivities needed)."""
        zero = budget_checks.zero_table(self.graph, self.config.wbits, self.config.abits)
        budget_checks.check_budgets(self.graph, self.problem(zero))
        self._budgets_checked = True

    def budgets(self) -> dict:
        c = self.config
        return plan_budgets(
            c.size_budget_bytes, c.bops, c.latency_budget_s, c.energy_budget_j, c.accelerator
        )

    def search(self, table: SensitivityTable | None = None) -> tuple[Plan, SearchResult]:
        """Solve with the configured search; with an accelerator, within the exact budgets."""
        if not self._budgets_checked:
            self.check_budgets()
        table = table or self.sensitivity()
        exact = None
        if self.cost_model is not None:

            def exact(solution, cm=self.cost_model):  # noqa: E306
                return exact_hardware_totals(self.graph, cm, solution)

        from hawq_search.studies import WorkerPool

        searcher = self.searcher
        with WorkerPool(self):
            outcome = solve_within_exact_budgets(
                searcher, lambda hw: self.problem(table, hw), self.targets(), exact
            )
        result = outcome.result
        if result.status is SearchStatus.INFEASIBLE:
            targets = {"size": self.config.size_budget_bytes, "bops": self.config.bops}
            targets.update(self.targets())
            raise budget_checks.joint_infeasibility(self.graph, outcome.problem, targets)
        if not result.success:
            raise RuntimeError(f"search failed: {result.message}")
        plan = plan_from_solution(
            self.plan_context(), outcome.problem, result.best, result, self.budgets(),
            self.searcher.describe(),
        )  # fmt: skip
        plan.provenance["repricing_rounds"] = outcome.rounds
        return plan, result

    # ---- plans -----------------------------------------------------------------------------
    def plan_context(self) -> PlanContext:
        c, loaded = self.config, self.loaded
        calib = self.calib
        return PlanContext(
            graph=self.graph,
            model_info={
                "id": loaded.model_id,
                "source": _model_source(c, loaded),
                "checkpoint": c.checkpoint,
                "input_shape": list(loaded.preprocess.input_size),
                "num_classes": loaded.num_classes,
                "preprocess": loaded.preprocess.to_dict(),
            },
            ranges=self.activation_ranges,
            provenance={
                "calibration": {"source": calib.source, "size": len(calib), "seed": c.seed},
                "seed": c.seed,
            },
            cost_model=self.cost_model,
        )

    def make_plan(self, w_bits, a_bits, loss=None, act_loss=None) -> Plan:
        return make_plan(self.plan_context(), w_bits, a_bits, loss, act_loss)

    def uniform_plan(self, **budgets: float | None) -> Plan:
        """The most precise uniform plan within the configured budgets (keyword arguments
        ``size_bytes``, ``bops``, ``latency_s``, ``energy_j`` override them)."""
        limits = {**self.budgets(), **budgets}
        return uniform_plan(self.plan_context(), self.config.wbits, self.config.abits, limits)

    def float_plan(self) -> Plan:
        return self.make_plan(
            {layer.name: [32] * layer.out_channels for layer in self.graph.layers},
            {g: 32 for g in self.graph.act_groups},
        )

    # ---- evaluation ------------------------------------------------------------------------
    def quantized_model(self, plan: Plan) -> torch.nn.Module:
        """The PTQ model of ``plan`` (BatchNorm correction as configured)."""
        c = self.config
        moments = None
        if c.bn_correction:  # the float model's half of the correction: once per pipeline
            if c.batch_size not in self._float_moments:
                self._float_moments[c.batch_size] = batch_moments(
                    self.model, self.calib, batch_size=c.batch_size
                )
            moments = self._float_moments[c.batch_size]
        return ptq_model(
            self.model, plan, self.calib, bn_correction=c.bn_correction, batch_size=c.batch_size,
            float_moments=moments,
        )  # fmt: skip

    def top1(self, plan: Plan | None, label: str) -> float:
        """Top-1 (%) on the evaluation data of the float model (``plan`` None) or of a plan."""
        model = self.model if plan is None else self.quantized_model(plan)
        with progress_bar(
            self.config.progress, len(self.eval_data), f"evaluating {label}", "img"
        ) as bar:
            return top1(model, self.eval_data, progress=bar)

    def variant(self, **changes) -> Pipeline:
        """A pipeline for the same model and data with other budgets or search settings
        (``changes`` are RunConfig fields), sharing every stage computed so far: model, data,
        graph, activation ranges, sensitivity tables, cost model and held-out images."""
        from dataclasses import replace

        config = replace(self.config, **changes)
        other = Pipeline(config, model=self._loaded, calib=self._calib, eval_data=self._eval,
                         example_input=self._example, loss_fn=self.loss_fn)  # fmt: skip
        other._graph, other._ranges, other._cost_model = self._graph, self._ranges, self._cost_model
        other._float_moments = self._float_moments
        same_tables = all(getattr(config, k) == getattr(self.config, k) for k in _TABLE_FIELDS)
        other._tables = dict(self._tables) if same_tables else {}
        if config.out == self.config.out and self._lock is not None:
            other.out, other._lock, other._owns_lock = self.out, self._lock, False
        if self._measure is not None and config.heldout_size == self.config.heldout_size:
            other._measure = type(self._measure)(other, data=self._measure._data)
        return other

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the run directory (removing it if the run wrote nothing there)."""
        if self._lock is not None:
            if self._owns_lock:
                self._lock.release()
            self._lock = None

    def run_dir(self) -> Path:
        """The run directory (a new one under runs/ by default), created, checked writable and
        locked against other processes before any work is spent on it."""
        if self.out is None:
            self.out = new_run_dir(self.config.model)
        if self._lock is None:
            self._lock = RunDirLock(self.out)
        return self.out


# RunConfig fields a sensitivity table depends on (besides model and calibration data).
_TABLE_FIELDS = ("wbits", "abits", "seed", "hessian_probes", "precision", "batch_size")


def _model_source(config: RunConfig, loaded: LoadedModel) -> str:
    if loaded.weights_source == "python":  # a module handed to search_plan
        return "python"
    if config.checkpoint:
        return "checkpoint"
    return "factory" if ":" in config.model else "registry"


def new_run_dir(model: str) -> Path:
    """A fresh ``runs/<model>-<time>`` directory name (not yet created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = model.replace(":", "_").replace("/", "_")
    base = Path("runs") / f"{safe}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path
