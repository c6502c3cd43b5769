"""Optuna search: Optuna corrects the sensitivity proxy per layer, the exact solver allocates.

Design, and why. A per-channel plan of a ResNet-50 has 27k channels; sampling a bit-width per
channel would give Optuna a 27k-dimensional space in which almost every point breaks a budget.
Instead each trial samples one log-scale multiplier per layer (and one per activation group
with a choice), multiplies that layer's predicted loss increases by it, and hands the rescaled
problem to the exact solver (:class:`~searches.ilp.IlpSearch` by default), which allocates the
channels under every budget. So

* the space has one dimension per layer (a few dozen to a few hundred), whatever the channel
  count;
* every trial is feasible by construction and channel-optimal for its rescaled objective:
  Optuna only moves the trade-off *between* layers where measurement disagrees with the proxy;
* the all-ones trial is the plain ILP optimum; it is enqueued first, so the
  study can only improve on it.

A trial's value is the objective of the plan it produced on the *original* problem: the proxy
(predicted loss increase) or a measurement (``measure(solution) -> {"loss": ..., ...}``, e.g.
the PTQ loss on held-out images, supplied by the caller). With ``tradeoff`` the study is
multi-objective (value, cost of that resource): each trial also samples a fraction of that
resource's budget, and the result is the Pareto set. Budgets stay hard: a trial whose inner
solve finds no plan is pruned, and the ``constraints_func`` given to the sampler reports any
plan over a budget (never expected; the result drops such plans).

Studies live in Optuna storages: in memory by default, or any RDB URL (``sqlite:///study.db``,
``postgresql://...``) so that a study survives a crash (``kill -9`` loses only running trials,
failed by the heartbeat and retried once) and several processes or machines share it. A study
records the fingerprint of its problem and the caller's ``study_attrs``; a process whose
problem or settings differ is refused with the first difference named.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hawq_search.core.exceptions import UserInputError
from searches._base import BaseSearch
from searches.ilp import IlpSearch
from searches.problem import SearchProblem, Solution
from searches.result import SearchResult, SearchStatus

__all__ = ["OptunaSearch", "StudyMismatchError", "TrialProgress", "SAMPLERS"]

SAMPLERS = ("tpe", "nsga2", "random")
HEARTBEAT_S = 5  # a killed worker's trial is failed (and retried) after GRACE_S without a beat
GRACE_S = 20

# solution -> metrics; "loss" is the value a trial minimises, the rest is recorded
Measure = Callable[[Solution], Mapping[str, float]]


class StudyMismatchError(UserInputError):
    """A study was created with another problem or other settings than this process has."""


@dataclass(frozen=True)
class TrialProgress:
    """What a progress callback gets after every finished trial of this process."""

    done: int  # complete trials in the study (all workers)
    total: int  # requested complete trials
    best: float | None  # best value so far (single objective) or None
    seconds_per_trial: float  # this process's wall time per finished trial
    seconds_left: float | None  # estimate for the remaining trials at this process's pace


class OptunaSearch(BaseSearch):
    """Optuna over per-layer (and per activation group) loss multipliers; see the module doc.

    Args:
        n_trials: complete trials the study should reach (counted over every worker; a resumed
            study runs only the missing ones).
        measure: the measured objective; None optimises the proxy.
        objective: its name, recorded in the study ("proxy", "measured", ...).
        tradeoff: a resource name for a multi-objective study (value, that resource's cost).
        tradeoff_min: the smallest fraction of that resource's budget a trial may sample.
        sampler: "tpe" (multi-objective TPE with a tradeoff), "nsga2" or "random".
        scale_range: bounds of the log-uniform multipliers.
        storage: None (in memory) or an Optuna RDB URL.
        study_name: the study in ``storage``.
        if_exists: "error" (refuse a study that already has finished trials) or "join"
            (continue it: ``--resume``, or workers sharing one study).
        study_attrs: the caller's settings (model, data, budgets, ...) the study must agree on.
        inner: the exact solver of each trial's rescaled problem (default: ``IlpSearch()``).
        timeout_s: stop starting trials after this many seconds.
        progress: called with a :class:`TrialProgress` after every trial of this process.
    """

    name = "optuna"

    def __init__(
        self,
        n_trials: int = 100,
        *,
        measure: Measure | None = None,
        objective: str | None = None,
        tradeoff: str | None = None,
        tradeoff_min: float = 0.5,
        sampler: str = "tpe",
        seed: int | None = 0,
        scale_range: tuple[float, float] = (0.125, 8.0),
        storage: str | None = None,
        study_name: str = "hawq-search",
        if_exists: str = "error",
        study_attrs: Mapping | None = None,
        inner: Callable[[SearchProblem], SearchResult] | None = None,
        timeout_s: float | None = None,
        progress: Callable[[TrialProgress], None] | None = None,
    ) -> None:
        _check_settings(n_trials, sampler, scale_range, tradeoff_min, if_exists)
        self.n_trials, self.measure, self.tradeoff = n_trials, measure, tradeoff
        self.objective = objective or ("proxy" if measure is None else "measured")
        self.tradeoff_min, self.sampler_name, self.seed = tradeoff_min, sampler, seed
        self.scale_range, self.storage_url, self.study_name = scale_range, storage, study_name
        self.if_exists, self.study_attrs = if_exists, dict(study_attrs or {})
        self.inner = inner or IlpSearch().solve
        self.timeout_s, self.progress = timeout_s, progress
        self._cache: dict[tuple[str, str], dict[str, float]] = {}
        self.study: optuna.Study | None = None

    def describe(self) -> dict:
        return {
            "search": self.name, "objective": self.objective, "n_trials": self.n_trials,
            "sampler": self.sampler_name, "seed": self.seed, "tradeoff": self.tradeoff,
            "scale_range": list(self.scale_range), "study": self.study_name,
            "storage": _redact(self.storage_url),
        }  # fmt: skip

    # ---- the search ------------------------------------------------------------------------
    def solve(self, problem: SearchProblem) -> SearchResult:
        t0 = time.perf_counter()
        study = self.study = self._open_study(problem)
        space = _Space(problem, self.scale_range, self.tradeoff, self.tradeoff_min)
        if not _trials(study, (TrialState.COMPLETE,)):
            # Multipliers never change feasibility and fractions only shrink a budget: when the
            # problem itself has no plan, no trial has one.
            base = self.inner(problem)
            if not base.success:
                return SearchResult(base.status, base.message, (), dict(base.stats))
            if not _trials(study, _ALIVE):
                study.enqueue_trial(space.ones(), skip_if_exists=True)
        missing = self.n_trials - len(_trials(study, (TrialState.COMPLETE,)))
        if missing > 0:
            callbacks = [optuna.study.MaxTrialsCallback(self.n_trials), self._progress_cb(t0)]
            # MaxTrialsCallback stops every worker at n_trials complete trials; the attempt cap
            # ends a study whose trials keep being pruned (budget fractions with no plan).
            study.optimize(
                lambda trial: self._trial(problem, space, trial),
                n_trials=3 * missing + 10,
                timeout=self.timeout_s,
                callbacks=callbacks,
            )
        return self._result(problem, study, time.perf_counter() - t0)

    def _trial(self, problem: SearchProblem, space: _Space, trial: optuna.Trial):
        sub = space.problem_of(trial)
        res = self.inner(sub)
        if not res.success:
            trial.set_user_attr("inner_status", res.status.value)
            raise optuna.TrialPruned(f"no plan for this trial's budgets: {res.message}")
        sol = problem.solution(res.best.w_choice, res.best.a_choice)
        over = _over_budget(problem, sol)
        trial.set_user_attr("constraint", over)
        if _SET_CONSTRAINT:
            trial.set_constraint("over_budget", over)
        trial.set_user_attr("proxy", sol.objective)
        trial.set_user_attr("totals", sol.totals)
        trial.set_user_attr("w_choice", _encode(sol.w_choice))
        trial.set_user_attr("a_choice", _encode(sol.a_choice))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        value = sol.objective
        if self.measure is not None:
            metrics = self._measured(self.study, sol)
            trial.set_user_attr("metrics", metrics)
            value = metrics["loss"]
        if self.tradeoff is None:
            return value
        return value, sol.totals[self.tradeoff]

    def _measured(self, study: optuna.Study, sol: Solution) -> dict[str, float]:
        """The plan's measurement; a plan an earlier trial (of any worker) already measured is
        not measured again -- different multipliers often give the same plan."""
        key = (_encode(sol.w_choice), _encode(sol.a_choice))
        if key not in self._cache:
            for t in _trials(study, (TrialState.COMPLETE,)):
                ua = t.user_attrs
                if (ua.get("w_choice"), ua.get("a_choice")) == key and "metrics" in ua:
                    self._cache[key] = dict(ua["metrics"])
                    break
            else:
                self._cache[key] = {k: float(v) for k, v in self.measure(sol).items()}
        return dict(self._cache[key])

    def _progress_cb(self, t0: float):
        finished = [0]

        def callback(study: optuna.Study, trial: FrozenTrial) -> None:
            finished[0] += 1
            if self.progress is None:
                return
            done = len(_trials(study, (TrialState.COMPLETE,)))
            per = (time.perf_counter() - t0) / finished[0]
            best = _best_value(study) if self.tradeoff is None else None
            left = max(0, self.n_trials - done) * per
            self.progress(TrialProgress(done, self.n_trials, best, per, left))

        return callback

    def _result(self, problem: SearchProblem, study: optuna.Study, seconds: float) -> SearchResult:
        complete = _trials(study, (TrialState.COMPLETE,))
        feasible = [t for t in complete if t.user_attrs.get("constraint", 0.0) <= 0]
        stats = {
            "solver": f"optuna {optuna.__version__} ({self.sampler_name}) + exact inner solver",
            "solve_time_s": seconds, "trials_complete": len(complete),
            "trials_pruned": len(_trials(study, (TrialState.PRUNED,))),
            "trials_failed": len(_trials(study, (TrialState.FAIL,))), "study": self.study_name,
            "storage": _redact(self.storage_url), "objective": self.objective,
        }  # fmt: skip
        if not feasible:
            return SearchResult(SearchStatus.INFEASIBLE, "no trial found a plan", (), stats)
        if self.tradeoff is None:
            chosen = sorted(feasible, key=lambda t: (t.value, t.number))[:1]
        else:
            front = {t.number for t in study.best_trials}
            chosen = sorted((t for t in feasible if t.number in front), key=lambda t: t.values)
        solutions = tuple(_solution_of(problem, t) for t in chosen)
        stats["best_trial"] = chosen[0].number
        stats["best_metrics"] = dict(chosen[0].user_attrs.get("metrics", {}))
        stats["best_value"] = chosen[0].values[0]
        return SearchResult(SearchStatus.FEASIBLE, f"{len(complete)} trials", solutions, stats)

    # ---- the study -------------------------------------------------------------------------
    def _open_study(self, problem: SearchProblem) -> optuna.Study:
        attrs = {
            "problem": problem.fingerprint(), "objective": self.objective,
            "tradeoff": self.tradeoff, "tradeoff_min": self.tradeoff_min,
            "scale_range": list(self.scale_range), **_plain(self.study_attrs),
        }  # fmt: skip
        directions = ["minimize"] * (1 if self.tradeoff is None else 2)
        study = optuna.create_study(
            storage=self._storage(), sampler=self._sampler(), study_name=self.study_name,
            directions=directions, load_if_exists=True,
        )  # fmt: skip
        recorded = study.user_attrs.get("hawq_search")
        if recorded is None:
            study.set_user_attr("hawq_search", attrs)
        else:
            _check_same(recorded, attrs, self.study_name)
        study.set_user_attr(f"worker:{socket.gethostname()}:{os.getpid()}", time.time())
        done = len(_trials(study, (TrialState.COMPLETE,)))
        if recorded is not None and done and self.if_exists == "error":
            raise UserInputError(
                f"the Optuna study {self.study_name!r} already has {done} finished trials: pass "
                "if_exists='join' to continue it, or another study_name",
                params=("if_exists", "study_name"),
            )
        return study

    def _storage(self):
        if self.storage_url is None:
            return optuna.storages.InMemoryStorage()
        for attempt in range(5):
            try:
                return self._rdb_storage()
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds
                # Workers starting together race to create the tables and their version row.
                racing = ("already exists", "UNIQUE constraint", "database is locked")
                if any(text in str(exc) for text in racing) and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise UserInputError(
                    f"cannot open the study storage {_redact(self.storage_url)}: "
                    f"{type(exc).__name__}: {first}",
                    params=("storage",),
                ) from None
        raise AssertionError("unreachable")

    def _rdb_storage(self) -> RDBStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                self.storage_url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                engine_kwargs=_engine_kwargs(self.storage_url),
                **_retry_stale_trials(),
            )

    def _sampler(self) -> optuna.samplers.BaseSampler:
        constraints = None if _SET_CONSTRAINT else _constraints
        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler_name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=self.seed, constraints_func=constraints)
        return optuna.samplers.TPESampler(
            seed=self.seed, n_startup_trials=10, constraints_func=constraints
        )


class _Space:
    """The trial's parameters and the rescaled problem they define."""

    def __init__(self, problem: SearchProblem, scale_range, tradeoff, tradeoff_min) -> None:
        self.problem, self.lo, self.hi = problem, float(scale_range[0]), float(scale_range[1])
        self.layers = [name for name in problem.layer_names if _varies_w(problem, name)]
        self.groups = [
            g for k, g in enumerate(problem.act_groups) if problem.a_allowed[k].sum() > 1
        ]
        self.tradeoff, self.tradeoff_min = tradeoff, tradeoff_min
        if tradeoff is not None:
            r = problem.resource(tradeoff)
            if r is None or r.budget is None:
                raise UserInputError(
                    f"tradeoff {tradeoff!r} needs a budget on that resource",
                    params=("tradeoff",),
                )

    def ones(self) -> dict[str, float]:
        params = {f"w:{n}": 1.0 for n in self.layers} | {f"a:{g}": 1.0 for g in self.groups}
        if self.tradeoff is not None:
            params["budget_fraction"] = 1.0
        return params

    def problem_of(self, trial: optuna.Trial) -> SearchProblem:
        w = {n: trial.suggest_float(f"w:{n}", self.lo, self.hi, log=True) for n in self.layers}
        a = {g: trial.suggest_float(f"a:{g}", self.lo, self.hi, log=True) for g in self.groups}
        sub = self.problem.rescaled(w, a)
        if self.tradeoff is not None:
            frac = trial.suggest_float("budget_fraction", self.tradeoff_min, 1.0)
            budget = self.problem.resource(self.tradeoff).budget
            sub = sub.with_budgets({self.tradeoff: budget * frac})
        return sub


_ALIVE = (TrialState.RUNNING, TrialState.WAITING)
# Optuna 5 takes constraints from the trial; earlier versions from the sampler's constraints_func.
_SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")


def _trials(study: optuna.Study, states) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def _best_value(study: optuna.Study) -> float | None:
    values = [t.value for t in _trials(study, (TrialState.COMPLETE,)) if t.value is not None]
    return min(values) if values else None


def _constraints(trial: FrozenTrial) -> Sequence[float]:
    return [float(trial.user_attrs.get("constraint", 1.0))]


def _varies_w(problem: SearchProblem, layer: str) -> bool:
    """Whether a layer has a choice: a multiplier of a layer with one option changes nothing."""
    return any(problem.w_allowed[k].sum() > 1 for k in problem.groups_of(layer))


def _over_budget(problem: SearchProblem, sol: Solution) -> float:
    """The largest relative excess over any budget (0 when every budget holds)."""
    worst = 0.0
    for r in problem.resources:
        if r.budget is not None:
            limit = r.budget - r.slack
            excess = sol.totals[r.name] - limit * (1 + 1e-9)
            worst = max(worst, excess / max(abs(limit), 1e-300))
    return worst


def _encode(choice: np.ndarray) -> str:
    return np.asarray(choice, dtype=np.uint8).tobytes().hex()


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).astype(np.int64)


def _solution_of(problem: SearchProblem, trial: FrozenTrial) -> Solution:
    return problem.solution(
        _decode(trial.user_attrs["w_choice"]), _decode(trial.user_attrs["a_choice"])
    )


def _check_settings(n_trials, sampler, scale_range, tradeoff_min, if_exists) -> None:
    if not isinstance(n_trials, int) or n_trials < 1:
        raise UserInputError(
            f"n_trials must be a positive integer, got {n_trials!r}", params=("n_trials",)
        )
    if sampler not in SAMPLERS:
        raise UserInputError(
            f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}", params=("sampler",)
        )
    lo, hi = scale_range
    if not (0 < lo <= 1 <= hi and math.isfinite(hi)):
        raise UserInputError(f"scale_range must satisfy 0 < lo <= 1 <= hi, got {scale_range}")
    if not 0 < tradeoff_min <= 1:
        raise UserInputError(f"tradeoff_min must be in (0, 1], got {tradeoff_min}")
    if if_exists not in ("error", "join"):
        raise ValueError(f"if_exists must be 'error' or 'join', got {if_exists!r}")


def _plain(attrs: Mapping) -> dict:
    """JSON-safe copy (tuples become lists, as the storage returns them)."""
    return json.loads(json.dumps(dict(attrs), default=str))


def _check_same(recorded: Mapping, wanted: Mapping, study: str) -> None:
    for key in sorted(set(recorded) | set(wanted)):
        if recorded.get(key) != wanted.get(key):
            old, new = _short(recorded.get(key)), _short(wanted.get(key))
            raise StudyMismatchError(
                f"the Optuna study {study!r} was created with {key}={old}, this process has "
                f"{key}={new}: use the settings it was created with, or another study"
            )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _redact(url: str | None) -> str | None:
    """A storage URL without its password."""
    if url is None or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _retry_stale_trials() -> dict:
    """Re-enqueue (once) a trial whose worker died: Optuna >= 4.9 names the hook
    ``heartbeat_stale_trial_callback``, earlier versions ``failed_trial_callback``."""
    params = inspect.signature(RDBStorage.__init__).parameters
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if "heartbeat_stale_trial_callback" in params and retry is not None:
        return {"heartbeat_stale_trial_callback": retry(max_retry=1)}
    return {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}


def _engine_kwargs(url: str) -> dict:
    """SQLite: wait for a busy database instead of failing at once (several workers)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {}
