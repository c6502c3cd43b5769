"""The accuracy/cost trade-off: one searched plan per budget of a sweep, each measured on the
evaluation split, next to every uniform plan and the float model (``hawq-search pareto``).

Writes into the run directory: ``pareto/plan-<budget>.json`` (one plan per budget, written as
soon as it is found), ``pareto.json`` (every point), ``pareto.png`` (top-1 against cost) and
``report.md`` (the plans listed). An interrupted sweep resumes: budgets whose plan file and
measurement exist are not searched again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hawq_search.core.exceptions import InfeasibleBudgetError, UserInputError
from hawq_search.files import atomic_write_text, write_json
from hawq_search.pipeline import Pipeline

__all__ = ["Sweep", "parse_sweep", "run_pareto"]


@dataclass(frozen=True)
class Sweep:
    """A budget swept over ``values`` (in the option's unit)."""

    field: str  # RunConfig field: budget_mb, latency_ms or energy_mj
    values: tuple[float, ...]
    total: str  # the plan total it bounds
    unit: str
    scale: float  # plan total -> unit

    @property
    def label(self) -> str:
        return {"budget_mb": "size", "latency_ms": "latency", "energy_mj": "energy"}[self.field]


_SWEEPS = {
    "budget_mb": ("bytes", "MB", 1e-6),
    "latency_ms": ("latency_s", "ms", 1e3),
    "energy_mj": ("energy_j", "mJ", 1e3),
}


def parse_sweep(field: str, text: str) -> Sweep:
    """``start:stop:count`` (inclusive, evenly spaced) or a comma list of values."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            n = int(count)
            if n < 1:
                raise ValueError
            values = np.linspace(float(start), float(stop), n) if n > 1 else [float(start)]
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserInputError(
            f"{field} range {text!r} must be start:stop:count (e.g. 0.2:0.6:9) or a comma list",
            params=(field,),
        ) from None
    values = tuple(sorted({round(float(v), 12) for v in values}))
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise UserInputError(f"{field} values must be finite and > 0, got {text}", params=(field,))
    total, unit, scale = _SWEEPS[field]
    return Sweep(field, values, total, unit, scale)


def run_pareto(pipe: Pipeline, sweep: Sweep, progress=print) -> dict:
    """Search and measure one plan per budget of ``sweep``; write the run directory's files."""
    out = pipe.run_dir()
    (out / "pareto").mkdir(exist_ok=True)
    table = pipe.sensitivity()
    fp = pipe.top1(None, "float")
    points = []
    for value in sweep.values:
        points.append(_point(pipe, sweep, value, table, out))
        progress(_point_line(sweep, points[-1]))
    data = {
        "resource": sweep.label, "unit": sweep.unit, "budget_option": sweep.field,
        "float_top1": fp, "points": points, "uniform": _uniform_points(pipe, sweep),
        "eval_images": len(pipe.eval_data), "eval_source": pipe.eval_data.source,
        "search": pipe.config.search, "rerank": pipe.config.rerank,
    }  # fmt: skip
    write_json(out / "pareto.json", data)
    plot_pareto(data, out / "pareto.png")
    atomic_write_text(out / "report.md", pareto_report(data))
    return data


def _point(pipe: Pipeline, sweep: Sweep, value: float, table, out: Path) -> dict:
    path = out / "pareto" / f"plan-{sweep.label}-{value:g}.json"
    done = out / "pareto" / f"point-{sweep.label}-{value:g}.json"
    if path.is_file() and done.is_file():  # resumed sweep: already searched and measured
        return json.loads(done.read_text())
    variant = pipe.variant(**{sweep.field: value})
    try:
        plan, result = variant.search(table)
    except InfeasibleBudgetError as exc:
        return {"budget": value, "status": "infeasible", "message": str(exc)}
    plan.save(path)
    point = {
        "budget": value, "status": result.status.value,
        "cost": plan.totals[sweep.total] * sweep.scale, "top1": variant.top1(plan, f"{value:g}"),
        "avg_weight_bits": plan.totals["avg_weight_bits"], "plan": str(path.relative_to(out)),
        "predicted_loss_increase": plan.totals["predicted_loss_increase"],
        "solve_time_s": result.stats.get("solve_time_s"),
    }  # fmt: skip
    write_json(done, point)
    return point


def _point_line(sweep: Sweep, p: dict) -> str:
    if p["status"] == "infeasible":
        return f"{sweep.label} {p['budget']:g} {sweep.unit}: infeasible"
    return (
        f"{sweep.label} {p['budget']:g} {sweep.unit}: plan {p['cost']:.4g} {sweep.unit}, "
        f"{p['avg_weight_bits']:.2f} mean weight bits, top-1 {p['top1']:.2f} %"
    )


def _uniform_points(pipe: Pipeline, sweep: Sweep) -> list[dict]:
    """Every uniform (w, a) plan the options allow, measured; no budget applies to them."""
    c = pipe.config
    rows = []
    for wb in sorted(c.wbits):
        for ab in sorted(c.abits):
            plan = pipe.make_plan(
                {layer.name: [wb] * layer.out_channels for layer in pipe.graph.layers},
                {g: ab for g in pipe.graph.act_groups},
            )
            cost = plan.totals.get(sweep.total)
            if cost is None:
                continue
            rows.append({"w_bits": wb, "a_bits": ab, "cost": cost * sweep.scale,
                         "top1": pipe.top1(plan, f"uniform W{wb}A{ab}")})  # fmt: skip
    return rows


def plot_pareto(data: dict, path: Path) -> None:
    """Measured top-1 against cost: searched plans (line), uniform plans (points), float."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    pts = [p for p in data["points"] if p["status"] != "infeasible"]
    ax.plot([p["cost"] for p in pts], [p["top1"] for p in pts], "o-", label="searched plans")
    uni = data["uniform"]
    ax.scatter([u["cost"] for u in uni], [u["top1"] for u in uni], marker="s", color="tab:orange",
               label="uniform plans", zorder=3)  # fmt: skip
    for u in uni:
        ax.annotate(f"W{u['w_bits']}A{u['a_bits']}", (u["cost"], u["top1"]), fontsize=7,
                    textcoords="offset points", xytext=(3, -9))  # fmt: skip
    ax.axhline(data["float_top1"], color="gray", linestyle="--", label="float")
    tops = [p["top1"] for p in pts] + [u["top1"] for u in uni] + [data["float_top1"]]
    ax.set_ylim(max(0.0, min(tops) - 5), data["float_top1"] + 2)
    ax.set_xlabel(f"{data['resource']} ({data['unit']})")
    ax.set_ylabel(f"top-1 (%) on {data['eval_images']} images of {data['eval_source']}")
    ax.set_title("measured top-1 against cost (PTQ, no fine-tuning)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def pareto_report(data: dict) -> str:
    unit = data["unit"]
    lines = [
        f"# hawq-search pareto: top-1 against {data['resource']}",
        "",
        f"Top-1 on {data['eval_images']} images of `{data['eval_source']}`; float model "
        f"{data['float_top1']:.2f} %. Search `{data['search']}`"
        + (f", re-ranking the {data['rerank']} best ILP plans" if data["rerank"] > 1 else "")
        + ". PTQ only (no fine-tuning). Plot: `pareto.png`.",
        "",
        f"| budget ({unit}) | plan ({unit}) | mean w bits | top-1 (%) | plan file |",
        "|---|---|---|---|---|",
    ]
    for p in data["points"]:
        if p["status"] == "infeasible":
            lines.append(f"| {p['budget']:g} | infeasible | | | |")
        else:
            lines.append(
                f"| {p['budget']:g} | {p['cost']:.4g} | {p['avg_weight_bits']:.3f} | "
                f"{p['top1']:.2f} | `{p['plan']}` |"
            )
    lines += ["", f"| uniform plan | {unit} | top-1 (%) |", "|---|---|---|"]
    lines += [
        f"| W{u['w_bits']}A{u['a_bits']} | {u['cost']:.4g} | {u['top1']:.2f} |"
        for u in data["uniform"]
    ]
    return "\n".join(lines) + "\n"
