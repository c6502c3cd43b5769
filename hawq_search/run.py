"""The end-to-end job behind ``hawq-search run``."""

from __future__ import annotations

import time

import numpy as np

from hawq_search.pipeline import Session, config_dict, jsonable
from hawq_search.report import write_json, write_report

__all__ = ["run_job"]


def run_job(session: Session) -> dict:
    """Sensitivities, search, uniform baseline and PTQ evaluation; writes the run directory."""
    c = session.config
    session.check_budgets()
    t0 = time.perf_counter()
    table = session.sensitivity()
    session.timings.sensitivity = time.perf_counter() - t0

    t0 = time.perf_counter()
    plan, result = session.search(table)
    session.timings.search = time.perf_counter() - t0

    budget_bytes = c.budget_mb * 1e6 if c.budget_mb is not None else None
    uniform = session.uniform_plan(budget_bytes, c.bops)
    fp_plan = session.make_plan(
        {layer.name: [32] * layer.out_channels for layer in session.graph.layers},
        {g: 32 for g in session.graph.act_groups},
    )
    t0 = time.perf_counter()
    top1 = {
        "fp": session.evaluate(None, "float"),
        "uniform": session.evaluate(uniform, "uniform"),
        "plan": session.evaluate(plan, "plan"),
    }
    session.timings.evaluation = time.perf_counter() - t0

    session.out.mkdir(parents=True, exist_ok=True)
    plan.save(session.out / "plan.json")
    uniform.save(session.out / "uniform-plan.json")
    a_bits = sorted({lp.a_bits for lp in plan.layers})
    summary = {
        "model": c.model,
        "budget_bytes": budget_bytes,
        "budget_bops": c.bops,
        "plan_bytes": plan.totals["bytes"],
        "plan_bops": plan.totals["bops"],
        "uniform_bytes": uniform.totals["bytes"],
        "uniform_bops": uniform.totals["bops"],
        "fp_bytes": fp_plan.totals["bytes"],
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
        "sensitivity": table.method,
        "sensitivity_cached": bool(table.meta.get("cached")),
        "timings_s": {
            "sensitivity": session.timings.sensitivity,
            "search": session.timings.search,
            "evaluation": session.timings.evaluation,
        },
        "eval_images": len(session.eval_data),
        "eval_source": f"{session.eval_data.source} ({c.data_dir or 'default location'})",
        "calib_images": len(session.calib),
        "calib_source": f"{session.calib.source} ({c.data_dir or 'default location'})",
        "seed": c.seed,
        "config": config_dict(c),
    }
    summary = jsonable(summary)
    write_json(session.out / "summary.json", summary)
    write_report(session.out / "report.md", summary, plan)
    return summary


def _histogram(plan) -> dict[str, int]:
    bits = np.concatenate([np.array(lp.w_bits) for lp in plan.layers])
    values, counts = np.unique(bits, return_counts=True)
    return {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}
