"""The searches of a run by name: the ILP, re-ranking of its best plans, and Optuna studies
(where they live, what they must agree on, worker processes on this machine).

A study lives in an Optuna RDB storage: by default ``study.db`` (SQLite) in the run directory,
or ``config.storage`` (``postgresql://...`` lets workers on several machines join one study,
each running the same command with the same ``--storage`` and ``--study``). ``optuna-dashboard
<storage URL>`` shows a study as it runs.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from hawq_search.config import RunConfig
from hawq_search.core.exceptions import UserInputError
from hawq_search.inputs import dataset_name
from hawq_search.repricing import exact_hardware_totals, solve_within_exact_budgets
from searches import BaseSearch, IlpSearch, SearchProblem, SearchResult

if TYPE_CHECKING:
    from hawq_search.pipeline import Pipeline
    from searches.optuna_search import OptunaSearch, TrialProgress

__all__ = ["DEFAULT_STUDY", "build_search", "storage_url", "study_attrs", "WorkerPool"]

DEFAULT_STUDY = "hawq-search"


def build_search(pipe: Pipeline) -> BaseSearch:
    """The configured search of ``pipe``: ILP (optionally re-ranked) or Optuna."""
    c = pipe.config
    ilp = IlpSearch(time_limit=c.time_limit_s, mip_rel_gap=c.mip_gap)
    if c.search == "optuna":
        return optuna_search(pipe, ilp)
    if c.rerank > 1:
        from searches.rerank import RerankSearch

        ilp = IlpSearch(time_limit=c.time_limit_s, mip_rel_gap=c.mip_gap, n_solutions=c.rerank)
        return RerankSearch(ilp, pipe.measure)
    return ilp


def storage_url(pipe: Pipeline) -> str | None:
    """``config.storage``, else an SQLite file in the run directory (None: no run directory,
    as in the Python API without ``cache_dir``: the study lives in memory)."""
    if pipe.config.storage:
        return pipe.config.storage
    if pipe.config.out is None:
        return None
    return f"sqlite:///{(pipe.run_dir() / 'study.db').resolve()}"


def optuna_search(pipe: Pipeline, ilp: IlpSearch) -> OptunaSearch:
    from searches.optuna_search import OptunaSearch

    c = pipe.config
    measured = c.objective == "measured"
    url, name = storage_url(pipe), c.study or DEFAULT_STUDY
    if url is not None and not (c.resume or c.study):
        _refuse_finished_study(url, name)  # before workers join it
    return OptunaSearch(
        c.trials,
        measure=pipe.measure if measured else None,
        objective=c.objective,
        tradeoff=c.tradeoff,
        sampler=c.sampler,
        seed=c.seed,
        storage=url,
        study_name=name,
        if_exists="join",  # this process's own workers join it too
        study_attrs=study_attrs(pipe),
        inner=_exact_inner(pipe, ilp),
        timeout_s=c.search_timeout_s,
        progress=_TrialBar(c.progress, c.trials) if c.progress else None,
    )


def _refuse_finished_study(url: str, name: str) -> None:
    """A study with finished trials is continued only on request (resume, or a named study
    that workers share on purpose)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return
    except Exception:  # noqa: BLE001 - an unreachable storage is reported when it is opened
        return
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if done:
        raise UserInputError(
            f"the Optuna study {name!r} in the {url.split('://')[0]} storage already has {done} "
            "finished trials: pass resume to continue it, or another out or study",
            params=("resume", "out", "study"),
        )


def study_attrs(pipe: Pipeline) -> dict:
    """What every process of one study must agree on; the problem's fingerprint (which covers
    the sensitivity table's values, costs and budgets) is added by the search itself."""
    c = pipe.config
    attrs = {
        "model": pipe.loaded.model_id,
        "weights_sha256": _weights_hash(pipe),
        "dataset": dataset_name(c, pipe.loaded),
        "calib": f"{c.calib_size} train images, seed {c.seed}",
        "wbits": list(c.wbits),
        "abits": list(c.abits),
        "granularity": c.granularity,
        "sensitivity": c.sensitivity,
        "budgets": {
            "budget_mb": c.budget_mb,
            "bops": c.bops,
            "latency_ms": c.latency_ms,
            "energy_mj": c.energy_mj,
            "accelerator": c.accelerator,
        },  # fmt: skip
        "bn_correction": c.bn_correction,
    }
    if c.objective == "measured":
        attrs["heldout"] = f"{c.heldout_size} train images after the calibration ones"
        attrs["heldout_sha256"] = _tensor_hash(pipe.measure.data.images, pipe.measure.data.labels)
    return attrs


def _weights_hash(pipe: Pipeline) -> str:
    tensors = [t.detach() for t in pipe.model.state_dict().values()]
    return _tensor_hash(*tensors)


def _tensor_hash(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _exact_inner(pipe: Pipeline, ilp: IlpSearch):
    """Each trial's solver: the ILP, and with an accelerator the exact re-pricing loop, so every
    trial's plan meets the tile-padded latency and energy budgets."""
    if pipe.cost_model is None:
        return ilp.solve

    def exact(solution, graph=pipe.graph, cm=pipe.cost_model):
        return exact_hardware_totals(graph, cm, solution)

    def solve(problem: SearchProblem) -> SearchResult:
        targets = {
            name: problem.resource(name).budget
            for name in ("latency", "energy")
            if problem.resource(name) is not None and problem.resource(name).budget is not None
        }
        return solve_within_exact_budgets(
            ilp, lambda hw: problem.with_budgets(hw), targets, exact
        ).result

    return solve


class _TrialBar:
    """A tqdm bar of complete trials with the best value, time per trial and time left."""

    def __init__(self, enabled: bool, total: int) -> None:
        from hawq_search.progress import progress_bar

        self.bar = progress_bar(enabled, total, "optuna trials", "trial")

    def __call__(self, p: TrialProgress) -> None:
        self.bar.n = min(p.done, p.total)
        best = "" if p.best is None else f"best {p.best:.4g}, "
        left = "" if p.seconds_left is None else f", {p.seconds_left / 60:.1f} min left"
        self.bar.set_postfix_str(f"{best}{p.seconds_per_trial:.1f} s/trial{left}")
        self.bar.refresh()


class WorkerPool:
    """``config.workers - 1`` extra processes that join this run's study while the main process
    runs its own trials; each rebuilds the pipeline from the configuration, reads the cached
    sensitivities and works on the same storage."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.procs: list = []

    def __enter__(self) -> WorkerPool:
        c = self.pipe.config
        if c.search != "optuna" or c.workers <= 1:
            return self
        threads = max(1, (os.cpu_count() or 1) // c.workers)
        worker = RunConfig(**asdict(c))
        worker.storage, worker.resume, worker.progress = storage_url(self.pipe), True, False
        worker.workers, worker.threads = 1, threads
        ctx = multiprocessing.get_context("spawn")
        for _ in range(c.workers - 1):
            proc = ctx.Process(target=_worker_main, args=(asdict(worker),), daemon=True)
            proc.start()
            self.procs.append(proc)
        return self

    def __exit__(self, *exc) -> None:
        failed = 0
        for proc in self.procs:
            proc.join(timeout=None if exc[0] is None else 5)
            if proc.is_alive():
                proc.terminate()
            failed += proc.exitcode not in (0, None)
        if failed and exc[0] is None:
            print(f"warning: {failed} of {len(self.procs)} optuna workers failed", file=sys.stderr)


def _worker_main(config: dict) -> None:
    import optuna

    from hawq_search.pipeline import Pipeline

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with Pipeline(RunConfig(**config)) as pipe:
            pipe.search()
    except UserInputError as exc:
        print(f"optuna worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
