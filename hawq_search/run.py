"""The end-to-end job behind ``hawq-search run``."""

from __future__ import annotations

import time

import numpy as np

from hawq_search.config import config_dict
from hawq_search.files import jsonable
from hawq_search.pipeline import Pipeline
from hawq_search.plan import Plan
from hawq_search.report import write_json, write_report
from searches import SearchResult

__all__ = ["run_job"]


def run_job(pipe: Pipeline) -> dict:
    """Sensitivities, search, uniform baseline and PTQ evaluation; writes the run directory.

    ``plan.json`` is written as soon as the search has found it, so an interrupted evaluation
    never loses a plan."""
    out = pipe.run_dir()
    pipe.check_budgets()
    t0 = time.perf_counter()
    table = pipe.sensitivity()
    pipe.timings.sensitivity = time.perf_counter() - t0

    t0 = time.perf_counter()
    plan, result = pipe.search(table)
    pipe.timings.search = time.perf_counter() - t0
    plan.save(out / "plan.json")

    uniform = pipe.uniform_plan()
    uniform.save(out / "uniform-plan.json")
    t0 = time.perf_counter()
    top1 = {
        "fp": pipe.top1(None, "float"),
        "uniform": pipe.top1(uniform, "uniform"),
        "plan": pipe.top1(plan, "plan"),
    }
    pipe.timings.evaluation = time.perf_counter() - t0

    summary = jsonable(_summary(pipe, plan, uniform, result, table, top1))
    write_json(out / "summary.json", summary)
    write_report(out / "report.md", summary, plan)
    return summary


def _summary(pipe: Pipeline, plan: Plan, uniform: Plan, result: SearchResult, table, top1) -> dict:
    c = pipe.config
    a_bits = sorted({lp.a_bits for lp in plan.layers})
    where = c.data_dir or "default location"
    return {
        "model": c.model,
        "budget_bytes": c.size_budget_bytes,
        "budget_bops": c.bops,
        "plan_bytes": plan.totals["bytes"],
        "plan_bops": plan.totals["bops"],
        "uniform_bytes": uniform.totals["bytes"],
        "uniform_bops": uniform.totals["bops"],
        "fp_bytes": pipe.float_plan().totals["bytes"],
        "top1": top1,
        "uniform_bits": uniform.provenance["uniform_bits"],
        "avg_weight_bits": plan.totals["avg_weight_bits"],
        "act_bits_summary": ",".join(map(str, a_bits)),
        "predicted_loss_increase": plan.totals["predicted_loss_increase"],
        "weight_bits_histogram": _histogram(plan),
        "solver": {
            "name": result.stats.get("solver"),
            "status": result.status.value,
            "mip_gap": result.stats.get("mip_gap"),
            "solve_time_s": result.stats.get("solve_time_s"),
            "n_vars": result.stats.get("n_vars"),
        },
        "search": search_details(result),
        "sensitivity": table.method,
        "sensitivity_cached": bool(table.meta.get("cached")),
        "sensitivity_runtime": table.meta.get("runtime"),
        "runtime": pipe.runtime.to_dict(),
        "timings_s": {
            "sensitivity": pipe.timings.sensitivity,
            "search": pipe.timings.search,
            "evaluation": pipe.timings.evaluation,
        },
        "eval_images": len(pipe.eval_data),
        "eval_source": f"{pipe.eval_data.source} ({where})",
        "calib_images": len(pipe.calib),
        "calib_source": f"{pipe.calib.source} ({where})",
        "seed": c.seed,
        "config": config_dict(c),
    }


def search_details(result: SearchResult) -> dict:
    """What a measuring search found: Optuna's trials, or the re-ranked ILP plans (measured on
    held-out train images, never the test split)."""
    st = result.stats
    keys = ("objective", "trials_complete", "trials_pruned", "trials_failed", "best_trial",
            "best_value", "best_metrics", "study", "storage", "rerank", "rerank_time_s")  # fmt: skip
    details = {k: st[k] for k in keys if k in st}
    if len(result.solutions) > 1 and "rerank" not in st:
        details["pareto"] = [
            {"objective": s.objective, "totals": dict(s.totals)} for s in result.solutions
        ]
    return details


def _histogram(plan) -> dict[str, int]:
    bits = np.concatenate([np.array(lp.w_bits) for lp in plan.layers])
    values, counts = np.unique(bits, return_counts=True)
    return {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}
