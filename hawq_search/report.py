"""Run outputs: ``summary.json`` (machine-readable), ``report.md`` (for people) and the console table."""

from __future__ import annotations

from pathlib import Path

from hawq_search.files import atomic_write_text, write_json
from hawq_search.plan import SIZE_DEFINITION, Plan, layer_summary

__all__ = ["console_table", "solver_status", "write_json", "write_report"]


def console_table(summary: dict, plan: Plan | None = None) -> str:
    """The console summary; with a ``plan`` priced on an accelerator, its latency, energy,
    their budgets and the extrapolated layers too."""
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
    return "\n".join(lines + hardware_lines(plan, max_names=8))


def hardware_lines(plan: Plan | None, max_names: int | None = None) -> list[str]:
    """Latency and energy of a priced plan against their budgets, and its extrapolated layers
    (at most ``max_names`` of them by name); no lines when the plan was not priced on an
    accelerator."""
    if plan is None or plan.totals.get("latency_s") is None:
        return []
    t, b = plan.totals, plan.budgets or {}
    lines = [
        f"{t.get('accelerator')} (batch {t.get('accelerator_batch')}): latency "
        f"{t['latency_s'] * 1e3:.4f} ms per batch{_budget(b.get('latency_s'), 1e3, 'ms')}",
        f"energy {t['energy_j'] * 1e3:.4f} mJ per batch{_energy_flag(plan)}"
        f"{_budget(b.get('energy_j'), 1e3, 'mJ')}",
    ]
    extra = list(t.get("extrapolated_layers") or [])
    if extra:
        shown = extra if max_names is None else extra[:max_names]
        more = f", ... ({len(extra) - len(shown)} more)" if len(shown) < len(extra) else ""
        lines.append(
            f"extrapolated (outside the measured cost table): {len(extra)} "
            f"layer{'s' if len(extra) != 1 else ''}: " + ", ".join(shown) + more
        )
    return lines


def energy_measured(plan: Plan) -> bool:
    """True when the plan's energy is all measured; energies the plan does not flag as measured
    (static power x time, analytic estimates, plans written before the flag) are not."""
    if "energy_measured" in plan.totals:
        return bool(plan.totals["energy_measured"])
    hw = [lp.hardware for lp in plan.layers]
    layers_ok = bool(hw) and all(h and h.get("energy_measured") for h in hw)
    return layers_ok and not plan.totals.get("other_ops_latency_s")


def _energy_flag(plan: Plan) -> str:
    if energy_measured(plan):
        return " (measured)"
    how = plan.totals.get("energy_note") or "static power x time or an analytic estimate"
    return f" (not measured: {how})"


def _budget(value, scale: float, unit: str) -> str:
    return "" if value is None else f", budget {value * scale:.4f} {unit}"


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
        f"Budgets: size {_mb(s['budget_bytes'])}, BOPs {s['budget_bops'] or 'none'}"
        f"{_hw_budgets(plan)}. {SIZE_DEFINITION}.",
        "",
        f"Search: {s['solver']['name']}, {solver_status(s['solver'])}; sensitivity "
        f"`{s['sensitivity']}`. PTQ only (no fine-tuning).",
        "",
        *search_lines(s.get("search", {})),
        "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["timings_s"].items()),
        "",
        *_hardware_section(plan),
        "## Per layer",
        "",
        *_layer_table(plan),
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _priced(plan: Plan) -> bool:
    return plan.totals.get("latency_s") is not None and all(lp.hardware for lp in plan.layers)


def _hw_budgets(plan: Plan) -> str:
    b = plan.budgets or {}
    if b.get("latency_s") is None and b.get("energy_j") is None:
        return ""
    lat = "none" if b.get("latency_s") is None else f"{b['latency_s'] * 1e3:.4f} ms"
    en = "none" if b.get("energy_j") is None else f"{b['energy_j'] * 1e3:.4f} mJ"
    return f", latency {lat}, energy {en} per batch on {b.get('accelerator')}"


def _hardware_section(plan: Plan) -> list[str]:
    if plan.totals.get("latency_s") is None:
        return []
    t = plan.totals
    lines = [f"## Hardware: {t.get('accelerator')} (batch {t.get('accelerator_batch')})", ""]
    lines += [f"- {line}" for line in hardware_lines(plan)]
    if not t.get("extrapolated_layers"):
        lines.append("- no layer is extrapolated")
    if t.get("other_ops_latency_s"):
        lines.append(f"- includes other ops (measured): {t['other_ops_latency_s'] * 1e3:.4f} ms")
    return [*lines, ""]


def _layer_table(plan: Plan) -> list[str]:
    """Per-layer rows; with latency, energy, bound and extrapolation when the plan is priced."""
    head = "| layer | channels | W bits mean (min-max) | A bits | bytes | predicted loss increase |"
    priced = _priced(plan)
    flags = [bool(lp.hardware.get("energy_measured")) for lp in plan.layers] if priced else []
    energy_head = "energy (mJ)" if any(flags) else "energy (mJ, not measured)"
    if priced:
        head += f" latency (ms) | {energy_head} | bound | extrapolated |"
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r, lp in zip(layer_summary(plan), plan.layers, strict=True):
        row = (
            f"| {r['name']} | {r['channels']} | {r['w_mean']:.2f} ({r['w_min']}-{r['w_max']}) | "
            f"{r['a_bits']} | {r['bytes']} | {r['pred']:.3e} |"
        )
        if priced:
            hw = lp.hardware
            mark = " (not measured)" if any(flags) and not hw.get("energy_measured") else ""
            row += (
                f" {hw['latency_s'] * 1e3:.4f} | {hw['energy_j'] * 1e3:.4f}{mark} | "
                f"{hw['bound']} | {'yes' if hw['extrapolated'] else 'no'} |"
            )
        lines.append(row)
    return lines


def search_lines(search: dict) -> list[str]:
    """Optuna's or the re-ranking's findings, measured on held-out train images."""
    lines: list[str] = []
    if "trials_complete" in search:
        m = search.get("best_metrics") or {}
        measured = (
            f", held-out loss {m['loss']:.4f}, top-1 {m['top1']:.2f} %" if "loss" in m else ""
        )
        lines += [
            f"Optuna ({search.get('objective')}): {search['trials_complete']} complete trials "
            f"({search.get('trials_pruned', 0)} pruned) in study `{search.get('study')}`; best "
            f"trial {search.get('best_trial')} (trial 0 is the plain ILP plan){measured}.",
            "",
        ]
    if search.get("rerank"):
        lines += [
            "Re-ranking of the ILP's best distinct plans on held-out train images:",
            "",
            "| ILP rank | predicted loss increase | held-out loss | held-out top-1 (%) |",
            "|---|---|---|---|",
            *(
                f"| {r['ilp_rank']} | {r['proxy']:.4g} | {r['loss']:.4f} | {r['top1']:.2f} |"
                for r in search["rerank"]
            ),
            "",
        ]
    return lines


def solver_status(solver: dict) -> str:
    """``optimal, gap 7.0e-05, 0.21 s``: the parts a solver reported (gap and time are optional)."""
    parts = [str(solver.get("status"))]
    if solver.get("mip_gap") is not None:
        parts.append(f"gap {solver['mip_gap']:.1e}")
    if solver.get("solve_time_s") is not None:
        parts.append(f"{solver['solve_time_s']:.2f} s")
    return ", ".join(parts)


def _mb(v) -> str:
    return "none" if v is None else f"{v / 1e6:.4f} MB"
