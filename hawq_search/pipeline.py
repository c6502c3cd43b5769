"""The ``run`` job: model -> calibration -> sensitivities -> search -> plan -> PTQ evaluation.

:class:`Session` loads each piece once, on first use, so the CLI's sub-commands (``sensitivity``,
``search``, ``evaluate``) and ``run`` share one code path. Sensitivity tables are cached in the
run directory under a key of everything they depend on, so a rerun (or a resumed, interrupted
run) with the same ``--out`` reuses them.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cost_models.size import layer_weight_bytes
from hawq_search import __version__
from hawq_search.data.datasets import TensorData, load_subset
from hawq_search.evaluation import top1
from hawq_search.exceptions import InfeasibleBudgetError, UserInputError
from hawq_search.graph.trace import ModelGraph, trace_model
from hawq_search.models.registry import LoadedModel, create_model
from hawq_search.models.weights import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Preprocess,
)
from hawq_search.plan import SIZE_DEFINITION, LayerPlan, Plan, apply_plan
from hawq_search.problem import build_problem, parse_granularity
from hawq_search.quant.bits import ALLOWED_BITS, is_quantized
from hawq_search.quant.bn import correct_bn
from hawq_search.sensitivity.calibration import act_clips, collect_act_stats
from hawq_search.sensitivity.fisher import METHODS as FISHER_METHODS
from hawq_search.sensitivity.fisher import fisher_sensitivity
from hawq_search.sensitivity.hessian import hessian_sensitivity
from hawq_search.sensitivity.table import SensitivityTable
from searches.ilp import IlpSearch, resource_range
from searches.result import SearchResult, SearchStatus

# "hessian" is Hutchinson on weights, the Fisher estimate on activations.
SENSITIVITY_METHODS = (*FISHER_METHODS, "hessian")

__all__ = ["RunConfig", "Session", "SENSITIVITY_METHODS"]


@dataclass
class RunConfig:
    """Every option of a run; the CLI fills it, library users may too."""

    model: str = "resnet56"
    checkpoint: str | None = None
    weights_dir: str | None = None
    dataset: str | None = None  # default: the dataset the model's weights were trained on
    data_dir: str | None = None
    calib_size: int = 512
    eval_size: int = 0  # 0 = the whole test split
    wbits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    abits: tuple[int, ...] = (8,)
    granularity: str = "channel"
    sensitivity: str = "fisher"
    budget_mb: float | None = None
    bops: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    seed: int = 0
    out: str | None = None
    batch_size: int = 128
    time_limit_s: float = 60.0
    mip_gap: float = 1e-4  # relative gap on the predicted loss increase
    hessian_probes: int = 100
    bn_correction: bool = True
    accelerator: str | None = None  # built-in profile name or profile YAML path
    accel_batch: int | None = None  # overrides the profile's batch size
    latency_ms: float | None = None
    energy_mj: float | None = None
    progress: bool = True

    def validate(self) -> None:
        for label, bits in (("--wbits", self.wbits), ("--abits", self.abits)):
            if not bits:
                raise UserInputError(f"{label} is empty: give bit options such as 2,3,4,5,6,8")
            bad = [b for b in bits if b not in ALLOWED_BITS]
            if bad:
                raise UserInputError(
                    f"{label} has {bad}: options are 2..8, 16 and 32 (unquantized)"
                )
        if self.sensitivity not in SENSITIVITY_METHODS:
            raise UserInputError(
                f"--sensitivity {self.sensitivity!r} is not one of {', '.join(SENSITIVITY_METHODS)}"
            )
        parse_granularity(self.granularity)
        if self.calib_size < 1:
            raise UserInputError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.eval_size < 0:
            raise UserInputError(f"--eval-size must be >= 0 (0 = all), got {self.eval_size}")
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise UserInputError(f"--budget-mb must be > 0, got {self.budget_mb}")
        if self.bops is not None and not self.bops > 0:
            raise UserInputError(f"--bops must be > 0, got {self.bops}")
        for label, v in (("--latency-ms", self.latency_ms), ("--energy-mj", self.energy_mj)):
            if v is not None and not v > 0:
                raise UserInputError(f"{label} must be > 0, got {v}")
        if (self.latency_ms is not None or self.energy_mj is not None) and not self.accelerator:
            raise UserInputError(
                "--latency-ms and --energy-mj need --accelerator NAME|PATH to price layers"
            )
        if (self.mean is None) != (self.std is None):
            raise UserInputError("--mean and --std go together: give both or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserInputError(f"--std values must be > 0, got {self.std}")


def _progress(enabled: bool, total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True
    )


@dataclass
class Timings:
    sensitivity: float = 0.0
    search: float = 0.0
    evaluation: float = 0.0
    other: dict = field(default_factory=dict)


class Session:
    """Lazily loaded state of one run directory."""

    def __init__(self, config: RunConfig) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.out) if config.out else _new_run_dir(config.model)
        self.timings = Timings()
        self._loaded: LoadedModel | None = None
        self._graph: ModelGraph | None = None
        self._calib: TensorData | None = None
        self._eval: TensorData | None = None
        self._clips: dict | None = None
        self._signed: dict | None = None
        self._cost_model = None
        self._budgets_checked = False

    # ---- inputs -------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            c = self.config
            pre = None
            if c.mean is not None:
                pre = Preprocess(mean=tuple(c.mean), std=tuple(c.std))
            elif ":" in c.model:
                mean, std = _dataset_stats(self.dataset_name(None))
                pre = Preprocess(mean=mean, std=std)
            self._loaded = create_model(
                c.model, checkpoint=c.checkpoint, weights_dir=c.weights_dir, preprocess=pre
            )
        return self._loaded

    def dataset_name(self, loaded: LoadedModel | None) -> str:
        if self.config.dataset:
            return self.config.dataset
        if loaded is not None and loaded.dataset in ("cifar10", "cifar100"):
            return loaded.dataset
        if loaded is not None and loaded.dataset == "imagenet":
            return "imagefolder"
        return "cifar10"

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def graph(self) -> ModelGraph:
        if self._graph is None:
            example = torch.zeros(1, *self.loaded.preprocess.input_size)
            self._graph = trace_model(self.model, example)
        return self._graph

    def _subset(self, split: str, size: int) -> TensorData:
        c = self.config
        return load_subset(
            self.dataset_name(self.loaded),
            c.data_dir,
            split,
            self.loaded.preprocess,
            size,
            c.seed,
            progress=c.progress,
        )

    @property
    def calib(self) -> TensorData:
        if self._calib is None:
            self._calib = self._subset("train", self.config.calib_size)
        return self._calib

    @property
    def eval_data(self) -> TensorData:
        if self._eval is None:
            self._eval = self._subset("test", self.config.eval_size)
        return self._eval

    def activation_ranges(self) -> tuple[dict, dict]:
        if self._clips is None:
            stats = collect_act_stats(self.model, self.graph, self.calib)
            bits = tuple(sorted(set(self.config.abits) | {8}))
            self._clips = act_clips(stats, tuple(b for b in bits if is_quantized(b)))
            self._signed = {g: s.signed for g, s in stats.items()}
        return self._clips, self._signed

    # ---- sensitivities ---------------------------------------------------------------------
    def _cache_key(self, method: str) -> str:
        c = self.config
        h = hashlib.sha256()
        for t in self.model.state_dict().values():
            h.update(t.detach().cpu().numpy().tobytes())
        h.update(
            json.dumps(
                [
                    method,
                    c.wbits,
                    c.abits,
                    self.calib.indices,
                    self.calib.source,
                    c.seed,
                    c.hessian_probes,
                    __version__,
                    list(self.loaded.preprocess.to_dict().values()),
                ],
                default=str,
            ).encode()
        )
        return h.hexdigest()[:16]

    def sensitivity(self, method: str | None = None) -> SensitivityTable:
        """The sensitivity table for ``method``, from the run directory's cache when present."""
        method = method or self.config.sensitivity
        c = self.config
        path = self.out / f"sensitivity-{method}-{self._cache_key(method)}.npz"
        if path.is_file():
            table = SensitivityTable.load(path)
            table.meta["cached"] = True
            return table
        t0 = time.perf_counter()
        clips, signed = self.activation_ranges()
        if method in FISHER_METHODS:
            with _progress(c.progress, len(self.calib), f"{method} sensitivities", "img") as bar:
                table = fisher_sensitivity(
                    self.model,
                    self.graph,
                    self.calib,
                    tuple(c.wbits),
                    tuple(c.abits),
                    clips,
                    signed,
                    method=method,
                    batch_size=c.batch_size,
                    seed=c.seed,
                    progress=bar,
                )
        else:
            act_table = self.sensitivity("fisher")
            with _progress(c.progress, c.hessian_probes, "Hutchinson probes", "probe") as bar:
                table = hessian_sensitivity(
                    self.model,
                    self.graph,
                    self.calib,
                    tuple(c.wbits),
                    tuple(c.abits),
                    act_table=act_table,
                    max_probes=c.hessian_probes,
                    seed=c.seed,
                    progress=bar,
                )
        table.meta["seconds"] = time.perf_counter() - t0
        self.out.mkdir(parents=True, exist_ok=True)
        table.save(path)
        return table

    # ---- search -------------------------------------------------------------------------
    @property
    def cost_model(self):
        """The accelerator cost model, or None without ``--accelerator``."""
        if self._cost_model is None and self.config.accelerator:
            from cost_models.registry import load_accelerator

            self._cost_model = load_accelerator(
                self.config.accelerator, batch=self.config.accel_batch
            )
        return self._cost_model

    def _problem(self, table: SensitivityTable, latency_s: float | None, energy_j: float | None):
        c = self.config
        return build_problem(
            self.graph,
            table,
            granularity=c.granularity,
            size_budget_bytes=c.budget_mb * 1e6 if c.budget_mb is not None else None,
            bops_budget=c.bops,
            cost_model=self.cost_model,
            latency_budget_s=latency_s,
            energy_budget_j=energy_j,
        )

    def search(self, table: SensitivityTable | None = None) -> tuple[Plan, SearchResult]:
        """Solve the ILP; with an accelerator, re-price the plan exactly (sub-kernel tile padding)
        and tighten the linearised latency/energy budgets until the exact costs meet them."""
        c = self.config
        if not self._budgets_checked:
            self.check_budgets()
        table = table or self.sensitivity()
        targets = self._targets()
        ilp_budgets = dict(targets)
        problem = self._problem(table, ilp_budgets["latency"], ilp_budgets["energy"])
        solver = IlpSearch(time_limit=c.time_limit_s, mip_rel_gap=c.mip_gap)
        for attempt in range(1, 9):  # noqa: B007 - reported after the loop
            result = solver.solve(problem)
            if result.status is SearchStatus.INFEASIBLE:
                raise InfeasibleBudgetError(self._joint_infeasibility(problem, targets))
            if not result.success:
                raise RuntimeError(f"search failed: {result.message}")
            plan = self._plan_from_choice(problem, table, result)
            if self.cost_model is None:
                break
            exact = {"latency": plan.totals["latency_s"], "energy": plan.totals["energy_j"]}
            over = {
                name: exact[name] - target
                for name, target in targets.items()
                if target is not None and exact[name] > target * (1 + 1e-9)
            }
            if not over:
                break
            for name, excess in over.items():
                ilp_budgets[name] -= excess * 1.02 + 1e-12
            problem = self._problem(table, ilp_budgets["latency"], ilp_budgets["energy"])
        else:
            raise InfeasibleBudgetError(
                "the exact (tile-padded) cost of every plan found exceeds the "
                f"{' and '.join(over)} budget: relax it or use --granularity layer"
            )
        plan.provenance["repricing_rounds"] = attempt
        return plan, result

    def _joint_infeasibility(self, problem, targets: dict) -> str:
        """Name every budget taking part when each is reachable alone but not all together."""
        c = self.config
        values = {
            "size": c.budget_mb * 1e6 if c.budget_mb is not None else None,
            "bops": c.bops,
            "latency": targets["latency"],
            "energy": targets["energy"],
        }
        parts, lows = [], []
        for r in problem.resources:
            if values.get(r.name) is None:
                continue
            if r.name == "size":
                low = self._uniform_bytes(min(problem.w_bits))
            else:
                low = resource_range(problem, r.name)[0]
            parts.append(f"{_budget_label(r.name)} {_fmt(r.name, values[r.name])}")
            lows.append(_fmt(r.name, low))
        if len(parts) == 1:
            return (
                f"no plan meets {parts[0]} once each layer's exact cost is counted (smallest "
                f"reachable alone: {lows[0]}): relax it"
            )
        return (
            f"no plan meets {' and '.join(parts)} together (each alone is reachable; smallest: "
            f"{', '.join(lows)}): relax one of them"
        )

    def check_budgets(self) -> None:
        """Fail fast on infeasible budgets and warn on non-binding ones, before any sensitivity
        is computed (ranges of costs do not depend on losses)."""
        c = self.config
        zero = SensitivityTable(
            "none",
            tuple(c.wbits),
            tuple(c.abits),
            {
                layer.name: np.zeros((layer.out_channels, len(c.wbits)))
                for layer in self.graph.layers
            },
            {g: np.zeros(len(c.abits)) for g in self.graph.act_groups},
        )
        targets = self._targets()
        self._warn_non_binding(self._problem(zero, targets["latency"], targets["energy"]))
        self._budgets_checked = True

    def _targets(self) -> dict[str, float | None]:
        c = self.config
        return {
            "latency": c.latency_ms / 1e3 if c.latency_ms is not None else None,
            "energy": c.energy_mj / 1e3 if c.energy_mj is not None else None,
        }

    def _warn_non_binding(self, problem) -> None:
        for r in problem.resources:
            if r.budget is None:
                continue
            if r.name == "size":  # exact bytes: size is monotone in every channel's bits
                low, high = (
                    self._uniform_bytes(min(problem.w_bits)),
                    self._uniform_bytes(max(problem.w_bits)),
                )
                feasible = low <= r.budget
            else:
                low, high = resource_range(problem, r.name)
                feasible = low <= r.budget
            if not feasible:
                raise InfeasibleBudgetError(
                    f"{_budget_label(r.name)} {_fmt(r.name, r.budget)} is infeasible: the smallest "
                    f"plan with --wbits {','.join(map(str, problem.w_bits))} and --abits "
                    f"{','.join(map(str, problem.a_bits))} needs {_fmt(r.name, low)}"
                )
            if high <= r.budget:
                warnings.warn(
                    f"{_budget_label(r.name)} {_fmt(r.name, r.budget)} does not bind: the largest plan "
                    f"needs only {_fmt(r.name, high)}",
                    stacklevel=2,
                )

    def _uniform_bytes(self, bits: int) -> int:
        return sum(
            layer_weight_bytes(layer, [bits] * layer.out_channels) for layer in self.graph.layers
        )

    def _plan_from_choice(self, problem, table: SensitivityTable, result: SearchResult) -> Plan:
        c = self.config
        w_bits = {layer.name: [0] * layer.out_channels for layer in self.graph.layers}
        loss = {layer.name: 0.0 for layer in self.graph.layers}
        for g, i in zip(problem.weight_groups, result.w_choice, strict=True):
            start, stop = g.channels
            w_bits[g.layer][start:stop] = [problem.w_bits[i]] * (stop - start)
            loss[g.layer] += float(g.loss[i])
        a_bits = {
            grp: problem.a_bits[j]
            for grp, j in zip(problem.act_groups, result.a_choice, strict=True)
        }
        act_loss = {
            grp: float(problem.act_loss[k, j])
            for k, (grp, j) in enumerate(zip(problem.act_groups, result.a_choice, strict=True))
        }
        plan = self.make_plan(w_bits, a_bits, loss, act_loss)
        plan.budgets = {
            "size_bytes": c.budget_mb * 1e6 if c.budget_mb is not None else None,
            "bops": c.bops,
            "latency_s": c.latency_ms / 1e3 if c.latency_ms is not None else None,
            "energy_j": c.energy_mj / 1e3 if c.energy_mj is not None else None,
            "accelerator": c.accelerator,
            "size_definition": SIZE_DEFINITION,
        }
        plan.provenance.update(
            {
                "sensitivity": table.method,
                "sensitivity_samples": table.meta.get("samples"),
                "solver": result.stats.get("solver"),
                "solver_status": result.status.value,
                "mip_gap": result.stats.get("mip_gap"),
                "solve_time_s": result.stats.get("solve_time_s"),
                "granularity": c.granularity,
                "predicted_objective": result.objective,
            }
        )
        return plan

    def make_plan(
        self,
        w_bits: dict[str, list[int]],
        a_bits: dict[str, int],
        loss: dict[str, float] | None = None,
        act_loss: dict[str, float] | None = None,
    ) -> Plan:
        """A plan for this model from per-channel weight bits and per-group activation bits."""
        clips, signed = (
            self.activation_ranges() if any(is_quantized(b) for b in a_bits.values()) else ({}, {})
        )
        layers = []
        seen_groups: set[str] = set()
        for layer in self.graph.layers:
            ab = a_bits[layer.act_group]
            pred = (loss or {}).get(layer.name, 0.0)
            if layer.act_group not in seen_groups:  # charge a group's activation loss once
                pred += (act_loss or {}).get(layer.act_group, 0.0)
                seen_groups.add(layer.act_group)
            layers.append(
                LayerPlan(
                    name=layer.name,
                    type=layer.op,
                    weight_shape=layer.weight_shape,
                    w_bits=list(w_bits[layer.name]),
                    a_bits=ab,
                    act_group=layer.act_group,
                    act_clip=float(clips.get(layer.act_group, {}).get(ab, 0.0)),
                    act_signed=bool(signed.get(layer.act_group, False)),
                    predicted_loss_increase=pred,
                    info=layer,
                )
            )
        c = self.config
        plan = Plan(
            model={
                "id": c.model,
                "checkpoint": c.checkpoint,
                "input_shape": list(self.loaded.preprocess.input_size),
                "num_classes": self.loaded.num_classes,
                "preprocess": self.loaded.preprocess.to_dict(),
            },
            layers=layers,
            provenance={
                "calibration": {
                    "source": self.calib.source,
                    "size": len(self.calib),
                    "seed": c.seed,
                },
                "seed": c.seed,
                "hawq_search_version": __version__,
                "torch_version": torch.__version__,
            },
        )
        plan.recompute_totals()
        if self.cost_model is not None:
            plan.price(self.cost_model)
        return plan

    def uniform_plan(self, budget_bytes: float | None, bops: float | None) -> Plan:
        """The most precise single (weight, activation) bit pair that fits the same budgets."""
        c = self.config
        best = None
        for wb in sorted(c.wbits, reverse=True):
            for ab in sorted(c.abits, reverse=True):
                plan = self.make_plan(
                    {layer.name: [wb] * layer.out_channels for layer in self.graph.layers},
                    {g: ab for g in self.graph.act_groups},
                )
                t = plan.totals
                fits = (
                    (budget_bytes is None or t["bytes"] <= budget_bytes)
                    and (bops is None or t["bops"] <= bops)
                    and (c.latency_ms is None or t["latency_s"] <= c.latency_ms / 1e3)
                    and (c.energy_mj is None or t["energy_j"] <= c.energy_mj / 1e3)
                )
                if fits:
                    best = plan
                    break
            if best is not None:
                break
        if best is None:
            raise InfeasibleBudgetError(
                "no uniform plan fits the budgets: add lower options to --wbits or relax the budget"
            )
        best.provenance["uniform_bits"] = {
            "w": best.layers[0].w_bits[0],
            "a": best.layers[0].a_bits,
        }
        return best

    # ---- evaluation -----------------------------------------------------------------------
    def quantized_model(self, plan: Plan) -> torch.nn.Module:
        """The PTQ model of ``plan``: fake-quant layers, then BatchNorm correction if enabled."""
        model = apply_plan(self.model, plan)
        if self.config.bn_correction:
            correct_bn(model, self.model, self.calib, batch_size=self.config.batch_size)
        return model

    def evaluate(self, plan: Plan | None, label: str) -> float:
        model = self.model if plan is None else self.quantized_model(plan)
        with _progress(
            self.config.progress, len(self.eval_data), f"evaluating {label}", "img"
        ) as bar:
            return top1(model, self.eval_data, progress=bar)


def _dataset_stats(name: str) -> tuple[tuple, tuple]:
    if name == "cifar100":
        return CIFAR100_MEAN, CIFAR100_STD
    return CIFAR10_MEAN, CIFAR10_STD


def _budget_label(name: str) -> str:
    return {
        "size": "--budget-mb",
        "bops": "--bops",
        "latency": "--latency-ms",
        "energy": "--energy-mj",
    }.get(name, name)


def _fmt(name: str, value: float) -> str:
    if name == "size":
        return f"{value / 1e6:.6f} MB ({value:.0f} bytes)"
    if name == "bops":
        return f"{value:.4g} BOPs"
    if name == "latency":
        return f"{value * 1e3:.6g} ms"
    if name == "energy":
        return f"{value * 1e3:.6g} mJ"
    return f"{value:.6g}"


def _new_run_dir(model: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = model.replace(":", "_").replace("/", "_")
    base = Path("runs") / f"{safe}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


def config_dict(config: RunConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def jsonable(x):
    """``x`` with numpy scalars and arrays as Python values and non-finite floats as None, so
    ``json.dumps`` writes strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
