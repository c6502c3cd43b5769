"""Run outputs: ``summary.json`` (machine-readable), ``report.md`` (for people) and the console table."""

from __future__ import annotations

import json
from pathlib import Path

from hawq_search.plan import SIZE_DEFINITION, Plan, layer_summary

__all__ = ["write_json", "write_report", "console_table"]


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a crash never leaves a truncated file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def console_table(summary: dict) -> str:
    t = summary["top1"]
    ub = summary["uniform_bits"]
    rows = [
        ("float", "32", f"{summary['fp_bytes'] / 1e6:.4f}", t["fp"]),
        (
            f"uniform W{ub['w']}A{ub['a']}",
            str(ub["w"]),
            f"{summary['uniform_bytes'] / 1e6:.4f}",
            t["uniform"],
        ),
        (
            "searched plan",
            f"{summary['avg_weight_bits']:.2f}",
            f"{summary['plan_bytes'] / 1e6:.4f}",
            t["plan"],
        ),
    ]
    lines = [f"{'':20s} {'avg W bits':>10s} {'size MB':>9s} {'top-1 %':>8s}"]
    lines += [f"{a:20s} {b:>10s} {c:>9s} {d:8.2f}" for a, b, c, d in rows]
    budget = summary.get("budget_bytes")
    if budget:
        lines.append(
            f"budget {budget / 1e6:.4f} MB (1 MB = 10^6 bytes, scales and biases included)"
        )
    return "\n".join(lines)


def write_report(path: Path, summary: dict, plan: Plan) -> None:
    s = summary
    t = s["top1"]
    lines = [
        f"# hawq-search report: {s['model']}",
        "",
        f"Evaluated on {s['eval_images']} images of `{s['eval_source']}`; calibration on "
        f"{s['calib_images']} images of `{s['calib_source']}` (seed {s['seed']}).",
        "",
        "| model | weight bits | activation bits | size (MB) | BOPs (G) | top-1 (%) |",
        "|---|---|---|---|---|---|",
        f"| float | 32 | 32 | {s['fp_bytes'] / 1e6:.4f} | - | {t['fp']:.2f} |",
        f"| uniform | {s['uniform_bits']['w']} | {s['uniform_bits']['a']} | {s['uniform_bytes'] / 1e6:.4f} | "
        f"{s['uniform_bops'] / 1e9:.2f} | {t['uniform']:.2f} |",
        f"| searched plan | {s['avg_weight_bits']:.3f} (mean) | {s['act_bits_summary']} | {s['plan_bytes'] / 1e6:.4f} | "
        f"{s['plan_bops'] / 1e9:.2f} | {t['plan']:.2f} |",
        "",
        f"Budgets: size {_mb(s['budget_bytes'])}, BOPs {s['budget_bops'] or 'none'}. {SIZE_DEFINITION}.",
        "",
        f"Search: {s['solver']['name']}, status {s['solver']['status']}, relative gap "
        f"{s['solver']['mip_gap']:.2e}, {s['solver']['solve_time_s']:.3f} s; sensitivity "
        f"`{s['sensitivity']}`. PTQ only (no fine-tuning).",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["timings_s"].items()),
        "",
        "## Per layer",
        "",
        "| layer | channels | W bits mean (min-max) | A bits | bytes | predicted loss increase |",
        "|---|---|---|---|---|---|",
    ]
    for r in layer_summary(plan):
        lines.append(
            f"| {r['name']} | {r['channels']} | {r['w_mean']:.2f} ({r['w_min']}-{r['w_max']}) | "
            f"{r['a_bits']} | {r['bytes']} | {r['pred']:.3e} |"
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _mb(v) -> str:
    return "none" if v is None else f"{v / 1e6:.4f} MB"
