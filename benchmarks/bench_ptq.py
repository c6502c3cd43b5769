"""PTQ benchmark of ResNet-56 on CIFAR-10: uniform vs per-layer vs per-channel ILP plans.

Calibrates (and computes Fisher sensitivities) on 512 images of ``cifar10-lossless/train``
(seed 0), then evaluates every plan on ``cifar10-lossless/test`` (1,000 images, exact pixels) and
on ``cifar10-jpeg/test`` (10,000 JPEG images), each with and without BatchNorm correction.
PTQ only: nothing is fine-tuned.

Run from the repository root::

    python benchmarks/bench_ptq.py

It writes ``benchmarks/results/ptq_resnet56.md`` and ``.json``. ``--quick`` runs one budget on
200-image evaluation subsets and writes into the work directory instead (a smoke test).
The work directory (default ``/tmp/hawq_bench_ptq``) holds the sensitivity cache, the plans and
the evaluations done so far, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from hawq_search.config import RunConfig
from hawq_search.data.datasets import load_subset
from hawq_search.evaluation import top1
from hawq_search.files import jsonable
from hawq_search.pipeline import Pipeline
from hawq_search.plan import SIZE_DEFINITION, Plan
from hawq_search.runtime import cpu_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, display_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HAWQ_SEARCH_SHARED", REPO.parent / "shared"))
LOSSLESS = SHARED / "data" / "cifar10-lossless"
JPEG = SHARED / "data" / "cifar10-jpeg"
WEIGHTS = SHARED / "weights"

BUDGETS_MB = (0.5, 0.3346, 0.32, 0.25)
ACT_SETTINGS = {"w-only": (32,), "a8": (8,)}
ACT_LABEL = {"w-only": "weights only (A32)", "a8": "8-bit activations (A8)"}
METHODS = ("uniform", "layer", "channel")
METHOD_LABEL = {
    "uniform": "uniform",
    "uniform_over": "uniform, over budget",
    "layer": "ILP per-layer",
    "channel": "ILP per-channel",
}
# A uniform plan up to this fraction over the budget is also evaluated, as a labelled reference.
OVER_BUDGET_REFERENCE = 0.001
EVALS = ("lossless", "jpeg")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def plan_fingerprint(plan: Plan) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                [lp.name, lp.w_bits, lp.a_bits, round(lp.act_clip, 9), lp.act_signed]
                for lp in plan.layers
            ]
        ).encode()
    )
    return h.hexdigest()[:16]


class Store:
    """A JSON file of finished evaluations, rewritten after each one (for resuming)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        self.reused = 0
        self.before = set(self.data)  # keys written by earlier invocations

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "cpu_description": cpu_description(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one budget (0.3346 MB), 200-image evals")
    ap.add_argument("--budgets", type=str, default=None, help="comma-separated MB budgets")
    ap.add_argument("--eval-size", type=int, default=None, help="images per eval set (0 = all)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir(), "hawq_bench_ptq"))
    ap.add_argument("--results-dir", type=Path, default=None)
    ap.add_argument("--time-limit", type=float, default=60.0, help="ILP time limit (s)")
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (1 is ~3x faster when other processes load this 2-core machine)",
    )
    ap.add_argument(
        "--render-from",
        type=Path,
        default=None,
        help="only rewrite the markdown next to this results JSON (no measuring)",
    )
    args = ap.parse_args()
    if args.render_from:
        r = json.loads(args.render_from.read_text())
        args.render_from.with_suffix(".md").write_text(render_md(r))
        return 0

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    started = dt.datetime.now().astimezone()
    command = command_line()  # python + script relative to the repository root

    budgets = (
        tuple(float(b) for b in args.budgets.split(","))
        if args.budgets
        else ((0.3346,) if args.quick else BUDGETS_MB)
    )
    eval_size = args.eval_size if args.eval_size is not None else (200 if args.quick else 0)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "plans").mkdir(exist_ok=True)
    results_dir = args.results_dir or (
        work / "quick" if args.quick else REPO / "benchmarks" / "results"
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    store = Store(work / "evals.json")
    log(f"command: {command}; budgets {budgets}; eval size {eval_size or 'all'}; work {work}")

    # ---- sessions: calibration always on lossless/train -------------------------------------
    sessions: dict[str, Pipeline] = {}
    for act, abits in ACT_SETTINGS.items():
        cfg = RunConfig(
            model="resnet56",
            dataset="imagefolder",
            data_dir=str(LOSSLESS),
            weights_dir=str(WEIGHTS),
            calib_size=512,
            eval_size=eval_size,
            abits=abits,
            seed=0,
            out=str(work),
            time_limit_s=args.time_limit,
            progress=False,
        )
        sessions[act] = Pipeline(cfg)
    s0 = sessions["w-only"]
    pre = s0.loaded.preprocess
    t0 = time.perf_counter()
    eval_sets = {"lossless": s0.eval_data}
    eval_sets["jpeg"] = load_subset("imagefolder", str(JPEG), "test", pre, eval_size, 0)
    for act in ACT_SETTINGS:  # share the loaded eval set
        sessions[act]._eval = eval_sets["lossless"]
    log(
        f"loaded eval sets: lossless/test {len(eval_sets['lossless'])}, jpeg/test "
        f"{len(eval_sets['jpeg'])}, calib {len(s0.calib)} ({s0.calib.source}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )

    def evaluate(model, name: str, key: str) -> tuple[float, float]:
        full_key = f"{key}|{name}|n={len(eval_sets[name])}"
        hit = store.get(full_key)
        if hit is not None:
            store.reused += full_key in store.before
            return hit["top1"], hit["seconds"]
        t = time.perf_counter()
        acc = top1(model, eval_sets[name])
        sec = time.perf_counter() - t
        store.put(full_key, {"top1": acc, "seconds": sec})
        return acc, sec

    # ---- FP reference, once per eval set -----------------------------------------------------
    fp = {}
    for name in EVALS:
        acc, sec = evaluate(s0.model, name, "fp")
        fp[name] = acc
        log(f"FP {name}: {acc:.2f}% ({sec:.1f}s)")
    fp_plan = s0.make_plan(
        {layer.name: [32] * layer.out_channels for layer in s0.graph.layers},
        {g: 32 for g in s0.graph.act_groups},
    )
    u3 = s0.make_plan(
        {layer.name: [3] * layer.out_channels for layer in s0.graph.layers},
        {g: 32 for g in s0.graph.act_groups},
    )

    # ---- sensitivities -------------------------------------------------------------------------
    tables = {}
    sens_info = {}
    for act, s in sessions.items():
        t = time.perf_counter()
        tables[act] = s.sensitivity()
        sens_info[act] = {
            "method": tables[act].method,
            "cached": bool(tables[act].meta.get("cached")),
            "compute_seconds": tables[act].meta.get("seconds"),
            "samples": tables[act].meta.get("samples"),
            "precision": tables[act].meta.get("precision"),
        }
        log(
            f"sensitivity {act}: {tables[act].method}, cached={bool(tables[act].meta.get('cached'))} "
            f"({time.perf_counter() - t:.1f}s)"
        )

    # ---- plans and evaluations -----------------------------------------------------------------
    rows = []
    plans: dict[int, Plan] = {}
    for act, s in sessions.items():
        for budget in budgets:
            row_fp = {
                "act": act,
                "budget_mb": budget,
                "method": "fp",
                "avg_weight_bits": 32.0,
                "mb": fp_plan.totals["mb"],
                "bytes": fp_plan.totals["bytes"],
                "top1": {f"{n}": fp[n] for n in EVALS},
            }
            rows.append(row_fp)
            methods = list(METHODS)
            u_next = None
            for wb in sorted(s.config.wbits):  # least precise uniform plan above the budget
                cand = s.make_plan(
                    {layer.name: [wb] * layer.out_channels for layer in s.graph.layers},
                    {g: s.config.abits[0] for g in s.graph.act_groups},
                )
                if cand.totals["bytes"] > budget * 1e6:
                    u_next = cand
                    u_next.provenance["uniform_bits"] = {"w": wb, "a": s.config.abits[0]}
                    break
            if u_next is not None and u_next.totals["bytes"] <= budget * 1e6 * (
                1 + OVER_BUDGET_REFERENCE
            ):
                methods.insert(1, "uniform_over")
            for method in methods:
                row = {"act": act, "budget_mb": budget, "method": method}
                pkey = f"{act}-{budget}-{method}-{s.config.sensitivity}-t{args.time_limit:g}"
                ppath = work / "plans" / f"{pkey}.json"
                plan_cached = ppath.is_file()
                if plan_cached:
                    plan = Plan.load(ppath)
                    plan.recompute_totals()
                elif method == "uniform":
                    plan = s.uniform_plan(size_bytes=budget * 1e6, bops=None)
                    plan.save(ppath)
                elif method == "uniform_over":
                    plan = u_next
                    plan.save(ppath)
                else:
                    s.config.budget_mb = budget
                    s.config.granularity = method
                    t = time.perf_counter()
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        plan, result = s.search(tables[act])
                    plan.provenance["n_vars"] = result.stats.get("n_vars")
                    plan.provenance["build_time_s"] = result.stats.get("build_time_s")
                    plan.provenance["highs_message"] = result.stats.get("highs_message")
                    plan.provenance["search_wall_s"] = time.perf_counter() - t
                    plan.provenance["warnings"] = [str(w.message) for w in caught]
                    plan.save(ppath)
                row["plan_cached"] = plan_cached
                row["avg_weight_bits"] = plan.totals["avg_weight_bits"]
                row["mb"] = plan.totals["mb"]
                row["bytes"] = plan.totals["bytes"]
                row["fits"] = plan.totals["bytes"] <= budget * 1e6
                row["predicted_loss_increase"] = plan.totals["predicted_loss_increase"]
                row["a_bits"] = sorted({lp.a_bits for lp in plan.layers})
                hist: dict[str, int] = {}
                for lp in plan.layers:
                    for b in lp.w_bits:
                        hist[str(b)] = hist.get(str(b), 0) + 1
                row["w_bits_channel_histogram"] = dict(
                    sorted(hist.items(), key=lambda kv: int(kv[0]))
                )
                if method.startswith("uniform"):
                    row["uniform_bits"] = plan.provenance.get("uniform_bits")
                else:
                    pv = plan.provenance
                    row["ilp"] = {
                        k: pv.get(k)
                        for k in (
                            "solver",
                            "solver_status",
                            "mip_gap",
                            "solve_time_s",
                            "build_time_s",
                            "n_vars",
                            "highs_message",
                            "predicted_objective",
                            "warnings",
                        )
                    }
                    row["layer_mean_bits"] = {
                        lp.name: sum(lp.w_bits) / len(lp.w_bits) for lp in plan.layers
                    }
                fpr = plan_fingerprint(plan)
                row["plan_fingerprint"] = fpr
                row["top1"] = {f"{n}_{t}": None for n in EVALS for t in ("bn", "nobn")}
                row["eval_seconds"] = {}
                plans[id(row)] = plan
                rows.append(row)

    def write_outputs(missing: list[str]) -> None:
        out = {
            "command": command,
            "started": started.isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - t_start,
            "machine": machine_info(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "ptq_only": True,
            "model": "resnet56",
            "calibration": {
                "source": display_path(LOSSLESS / "train"),
                "size": len(s0.calib),
                "seed": 0,
            },
            "eval_sets": {
                "lossless": {
                    "source": display_path(LOSSLESS / "test"),
                    "size": len(eval_sets["lossless"]),
                },
                "jpeg": {"source": display_path(JPEG / "test"), "size": len(eval_sets["jpeg"])},
            },
            "sensitivity": sens_info,
            "wbits": list(s0.config.wbits),
            "ilp_time_limit_s": args.time_limit,
            "size_definition": SIZE_DEFINITION,
            "fp_top1": fp,
            "fp_bytes": fp_plan.totals["bytes"],
            "uniform3_bytes": u3.totals["bytes"],
            "uniform3_avg_weight_bits": u3.totals["avg_weight_bits"],
            "params": fp_plan.totals["params"],
            "budgets_mb": list(budgets),
            "reused_evaluations": store.reused,
            "missing": missing,
            "rows": rows,
        }
        (results_dir / "ptq_resnet56.json").write_text(json.dumps(jsonable(out), indent=1))
        (results_dir / "ptq_resnet56.md").write_text(render_md(out))

    # ---- evaluations, cheapest first, so a stopped run still leaves whole columns -------------
    # Phase 1 builds every PTQ model (with and without BN correction, kept in memory) and scores
    # it on lossless/test; phase 2 scores the BN-corrected models on jpeg/test; phase 3 the rest.
    models: dict[str, torch.nn.Module] = {}

    def model_for(row: dict, bn: bool) -> torch.nn.Module:
        key = f"{row['plan_fingerprint']}|{'bn' if bn else 'nobn'}"
        if key not in models:
            s = sessions[row["act"]]
            t = time.perf_counter()
            s.config.bn_correction = bn
            models[key] = s.quantized_model(plans[id(row)])
            s.config.bn_correction = True
            row.setdefault("build_seconds", {})["bn" if bn else "nobn"] = time.perf_counter() - t
        return models[key]

    phases = [
        ("lossless/test, both BN settings", [("lossless", True), ("lossless", False)]),
        ("jpeg/test with BN correction", [("jpeg", True)]),
        ("jpeg/test without BN correction", [("jpeg", False)]),
    ]
    for k, (title, cells) in enumerate(phases):
        log(f"phase {k + 1}/{len(phases)}: {title}")
        for row in rows:
            if row["method"] == "fp":
                continue
            for name, bn in cells:
                tag = "bn" if bn else "nobn"
                key = f"{row['plan_fingerprint']}|{tag}"
                full_key = f"{key}|{name}|n={len(eval_sets[name])}"
                model = None if store.get(full_key) is not None else model_for(row, bn)
                acc, sec = evaluate(model, name, key)
                row["top1"][f"{name}_{tag}"] = acc
                row["eval_seconds"][f"{name}_{tag}"] = sec
            log(
                f"  {row['act']} {row['budget_mb']:g} MB {row['method']}: "
                + " ".join(
                    f"{n}_{'bn' if b else 'nobn'} {row['top1'][f'{n}_' + ('bn' if b else 'nobn')]:.2f}"
                    for n, b in cells
                )
                + f" | elapsed {time.perf_counter() - t_start:.0f}s"
            )
        missing = [title2 for title2, _ in phases[k + 1 :]]
        write_outputs(missing)
    wall = time.perf_counter() - t_start
    log(f"done in {wall:.0f}s; wrote {results_dir / 'ptq_resnet56.md'}")
    return 0


def _se(acc_pct: float, n: int) -> float:
    p = acc_pct / 100
    return 100 * (p * (1 - p) / n) ** 0.5


def _f(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def render_md(r: dict) -> str:
    m = r["machine"]
    ls, le = r["loadavg_start"], r["loadavg_end"]
    ev = r["eval_sets"]
    cpu = m.get("cpu_description") or f"{m['cpu_count']} cores ({m['cpu_model']})"
    lines = [
        "# PTQ benchmark: ResNet-56, CIFAR-10",
        "",
        "Reproduce (from the repository root):",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"- Date: {r['started']} (wall time {r['wall_s'] / 60:.1f} min)",
        f"- Machine: {cpu}, torch {m['torch_version']} "
        f"(torch threads: {m['torch_threads']}), Python {m['python']}; load average (1/5/15 min) "
        f"at start {ls[0]:.2f}/{ls[1]:.2f}/{ls[2]:.2f}, at end {le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f}"
        + (
            ". One torch thread because other jobs shared the two cores: under that load a side "
            "check evaluated 1,000 JPEG images about 3x faster with 1 thread than with 2."
            if m["torch_threads"] == 1
            else ""
        ),
        "- **PTQ only, no fine-tuning.** Calibration (activation clips, Fisher sensitivities, "
        f"BatchNorm correction): {r['calibration']['size']} images of `cifar10-lossless/train`, seed 0.",
        f"- Evaluation: `cifar10-lossless/test` ({ev['lossless']['size']} images, exact pixels) and "
        f"`cifar10-jpeg/test` ({ev['jpeg']['size']} JPEG images).",
        f"- **FP reference (measured here):** {r['fp_top1']['lossless']:.2f} % on lossless/test, "
        f"{r['fp_top1']['jpeg']:.2f} % on jpeg/test.",
        f"- Sensitivity: {r['sensitivity']['w-only']['method']}; weight bit options "
        f"{','.join(map(str, r['wbits']))}; ILP (HiGHS) time limit {r['ilp_time_limit_s']:g} s.",
        "",
    ]
    for act in ACT_SETTINGS:
        lines += [
            f"## {ACT_LABEL[act]}",
            "",
            "| budget MB | plan | mean W bits | size MB | lossless BN-corr | lossless no BN-corr "
            "| jpeg BN-corr | jpeg no BN-corr | ILP status / gap / solve s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            if row["act"] != act:
                continue
            t = row["top1"]
            if row["method"] == "fp":
                lines.append(
                    f"| {row['budget_mb']:g} | FP | 32 | {row['mb']:.4f} | {t['lossless']:.2f} | "
                    f"(same) | {t['jpeg']:.2f} | (same) | |"
                )
                continue
            if row["method"].startswith("uniform"):
                ub = row["uniform_bits"]
                label = f"uniform W{ub['w']}" + (f"A{ub['a']}" if ub["a"] != 32 else "")
                if row["method"] == "uniform_over":
                    label += f" (**over budget** by {row['bytes'] - row['budget_mb'] * 1e6:,.0f} B; reference)"
                ilp = ""
            else:
                label = METHOD_LABEL[row["method"]]
                i = row["ilp"]
                ilp = f"{i['solver_status']} / {i['mip_gap']:.1e} / {i['solve_time_s']:.2f}"
            lines.append(
                f"| {row['budget_mb']:g} | {label} | {row['avg_weight_bits']:.3f} | "
                f"{row['mb']:.4f} | {_f(t['lossless_bn'])} | {_f(t['lossless_nobn'])} | "
                f"{_f(t['jpeg_bn'])} | {_f(t['jpeg_nobn'])} | {ilp} |"
            )
        lines.append("")
    lines += [
        "Notes:",
        "",
        f"- Size = `Plan.recompute_totals()` from the plan's bits ({r['size_definition']}). "
        f"FP32 model: {r['fp_bytes'] / 1e6:.4f} MB; {r['params']:,} weights.",
        "- 0.3346 MB was chosen as the 3.0-mean-weight-bit budget: uniform 3-bit weights with their "
        "fp32 per-channel scales and biases counted. Measured by the size definition above, uniform "
        f"W3 is {r['uniform3_bytes']:,} bytes ({r['uniform3_bytes'] / 1e6:.6f} MB), "
        + (
            f"i.e. {r['uniform3_bytes'] - 334600:,} bytes *over* 0.3346 MB, so the best uniform plan "
            "that fits 0.3346 MB is W2; the table adds uniform W3 as a labelled over-budget reference row."
            if r["uniform3_bytes"] > 334600
            else "which fits 0.3346 MB."
        ),
        "- Uniform = the most precise single weight bit-width (A bits fixed by the setting) that fits "
        "the budget (`Pipeline.uniform_plan`). ILP rows: `Pipeline.search` with granularity `layer` "
        "(one bit-width per layer) or `channel` (one per output channel), minimising the predicted "
        "Fisher loss increase under the size budget. Status `optimal` means HiGHS closed the gap to "
        "its 1e-4 tolerance.",
        "- BN-corr = BatchNorm correction (`config.bn_correction=True`, the default: BN statistics "
        "shifted by the quantized-minus-float moments on the calibration images); no BN-corr = plain "
        "fake-quant model. FP rows need no correction.",
        "- Accuracy in %, top-1. All numbers are single runs (deterministic on CPU; no seeds averaged). "
        "One image is "
        f"{100 / ev['lossless']['size']:.2g} points on lossless/test, "
        f"{100 / ev['jpeg']['size']:.2g} on jpeg/test. Sampling error of one accuracy (binomial, at "
        f"the FP accuracy): about {_se(r['fp_top1']['lossless'], ev['lossless']['size']):.2f} points "
        f"on lossless/test and {_se(r['fp_top1']['jpeg'], ev['jpeg']['size']):.2f} on jpeg/test, so "
        "differences below ~1 point on lossless/test are not resolved (two plans on the same images "
        "are correlated, so paired differences are somewhat better resolved than this).",
    ]
    sens = r["sensitivity"]
    lines.append(
        "- Sensitivity tables: "
        + "; ".join(
            f"{act} {v['method']} on {v['samples']} images"
            + (f" ({v['precision']})" if v.get("precision") else "")
            + ", "
            + (
                f"loaded from the work-directory cache (computed earlier in {v['compute_seconds']:.0f} s)"
                if v["cached"]
                else f"computed in {v['compute_seconds']:.0f} s"
            )
            for act, v in sens.items()
        )
        + "."
    )
    if r["reused_evaluations"]:
        lines.append(
            f"- {r['reused_evaluations']} evaluations were reused from an earlier "
            "invocation of the same command (same plans, same images; work directory cache)."
        )
    if r["missing"]:
        lines.append(
            "- **Incomplete:** the run was stopped before these evaluations (cells shown as —): "
            + "; ".join(r["missing"])
            + "."
        )
    lines += ["", "## Reading", "", *render_reading(r), ""]
    return "\n".join(lines)


def render_reading(r: dict) -> list[str]:
    """Facts read off the table (generated, so they always match it)."""
    fp = r["fp_top1"]
    by = {(x["act"], x["budget_mb"], x["method"]): x for x in r["rows"]}
    budgets = r["budgets_mb"]
    out = []
    for act in ACT_SETTINGS:
        parts = []
        for method in METHODS:
            per_set = []
            for n in EVALS:
                close = [
                    f"{b:g}"
                    for b in budgets
                    if by[(act, b, method)]["top1"][f"{n}_bn"] is not None
                    and fp[n] - by[(act, b, method)]["top1"][f"{n}_bn"] <= 0.3
                ]
                per_set.append(f"{n} {', '.join(close) + ' MB' if close else 'none'}")
            parts.append(f"{METHOD_LABEL[method]}: " + ", ".join(per_set))
        out.append(
            f"- {ACT_LABEL[act]}, with BN correction: budgets within 0.3 points of FP "
            f"({fp['lossless']:.2f} lossless / {fp['jpeg']:.2f} jpeg) -- " + "; ".join(parts) + "."
        )
        for b in budgets:
            if (act, b, "uniform_over") in by:
                uo, uc = by[(act, b, "uniform_over")], by[(act, b, "channel")]
                ul = by[(act, b, "layer")]
                out.append(
                    f"  - {b:g} MB: the fitting uniform plan is W{by[(act, b, 'uniform')]['uniform_bits']['w']}; "
                    f"uniform W{uo['uniform_bits']['w']} ({uo['bytes']:,} B, over budget) scores "
                    f"{_f(uo['top1']['lossless_bn'])} / {_f(uo['top1']['jpeg_bn'])} (lossless / jpeg, "
                    f"BN-corr) against {_f(uc['top1']['lossless_bn'])} / {_f(uc['top1']['jpeg_bn'])} "
                    f"for the per-channel ILP and {_f(ul['top1']['lossless_bn'])} / "
                    f"{_f(ul['top1']['jpeg_bn'])} for the per-layer ILP, both within the budget."
                )
            if b not in (0.32, 0.25):
                continue
            u = by[(act, b, "uniform")]
            ub = u["uniform_bits"]
            t = u["top1"]
            ch = by[(act, b, "channel")]["top1"]
            out.append(
                f"  - {b:g} MB: uniform falls to W{ub['w']} ({u['avg_weight_bits']:.2f} bits) and "
                f"scores {_f(t['lossless_bn'])} / {_f(t['jpeg_bn'])} (lossless / jpeg, BN-corr; "
                f"{_f(t['lossless_nobn'])} / {_f(t['jpeg_nobn'])} without), against "
                f"{_f(ch['lossless_bn'])} / {_f(ch['jpeg_bn'])} for the per-channel ILP."
            )
        diffs = []
        for b in budgets:
            la = by[(act, b, "layer")]["top1"]["jpeg_bn"]
            ch = by[(act, b, "channel")]["top1"]["jpeg_bn"]
            diffs.append(f"{b:g} MB " + ("not measured" if None in (la, ch) else f"{ch - la:+.2f}"))
        out.append(
            "  - Per-channel minus per-layer ILP, jpeg/test with BN correction: "
            + ", ".join(diffs)
            + "."
        )
    worse = []
    for (act, b, method), x in by.items():
        if method not in ("layer", "channel"):
            continue
        u = by[(act, b, "uniform")]["top1"]
        for n in EVALS:
            for tag in ("bn", "nobn"):
                k = f"{n}_{tag}"
                if x["top1"][k] is not None and u[k] is not None and x["top1"][k] < u[k]:
                    worse.append(
                        f"{act} {b:g} MB {METHOD_LABEL[method]} on {n} "
                        f"({'BN-corr' if tag == 'bn' else 'no BN-corr'}): "
                        f"{_f(x['top1'][k])} < uniform {_f(u[k])}"
                    )
    out.append(
        "- ILP plans scoring below the uniform plan of the same budget: "
        + ("; ".join(worse) if worse else "none")
        + "."
    )
    bn_hurts = [
        f"{x['act']} {x['budget_mb']:g} MB {METHOD_LABEL[x['method']]} on {n} "
        f"({x['top1'][f'{n}_bn']:.2f} vs {x['top1'][f'{n}_nobn']:.2f})"
        for x in r["rows"]
        if x["method"] != "fp"
        for n in EVALS
        if None not in (x["top1"][f"{n}_bn"], x["top1"][f"{n}_nobn"])
        and x["top1"][f"{n}_bn"] < x["top1"][f"{n}_nobn"]
    ]
    out.append(
        "- BN correction lowering accuracy: " + ("; ".join(bn_hurts) if bn_hurts else "never") + "."
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
