"""Searching on measured accuracy: ILP optimum vs Optuna (proxy, measured) vs ILP + re-ranking.

ResNet-56 on CIFAR-10, per-channel weights, budgets 0.32 and 0.25 MB, weights only (A32) and with
8-bit activations (A8). Calibration: 512 seeded images of ``cifar10-lossless/train``; measured
objectives use the next 1,000 images of the same seeded permutation (held out from calibration,
never the test split). For every setting:

* ``ilp``: the exact optimum of the predicted loss increase;
* ``optuna-proxy``: Optuna on the predicted loss (per-layer multipliers, exact inner solver);
* ``optuna-measured``: Optuna on the held-out PTQ loss, ``--trials`` trials (default 100);
* ``optuna-measured-same-time``: the same, stopped after the wall time the re-ranking took;
* ``ilp-rerank``: the ILP's 8 best distinct plans, measured, best kept.

Each plan's top-1 on ``cifar10-lossless/test`` (1,000 exact-pixel images) and
``cifar10-jpeg/test`` (10,000 JPEG images), with BatchNorm correction (the default).

Run from the repository root::

    python benchmarks/bench_optuna.py

writes ``benchmarks/results/optuna_search.md`` and ``.json``; ``--quick`` (ResNet-20, one
budget, 10 trials, 200 test images) writes into ``/tmp/hawq_bench_quick``. The work directory
(default ``/tmp/hawq_bench_optuna``) keeps sensitivities, studies and finished rows, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    LOSSLESS,
    RESULTS,
    SHARED,
    WEIGHTS,
    Header,
    log,
    md_table,
    setup_torch,
    write_results,
)

from hawq_search.config import RunConfig  # noqa: E402
from hawq_search.data.datasets import load_subset  # noqa: E402
from hawq_search.evaluation import top1  # noqa: E402
from hawq_search.pipeline import Pipeline  # noqa: E402

JPEG = SHARED / "data" / "cifar10-jpeg"
SETTINGS = {"A32": (32,), "A8": (8,)}
METHODS = ("ilp", "optuna-proxy", "optuna-measured", "optuna-measured-same-time", "ilp-rerank")
TARGET = (
    "Target (issue 9): at 0.25 MB, weights only, the best of these beats the plain ILP's PTQ "
    "top-1 by at least 1.0 point on both test sets, with at most 10 minutes of search."
)


def pipeline(args, budget: float, abits, work: Path, **search) -> Pipeline:
    config = RunConfig(
        model=args.model, dataset="imagefolder", data_dir=str(LOSSLESS), weights_dir=str(WEIGHTS),
        budget_mb=budget, abits=abits, wbits=(2, 3, 4, 5, 6, 8), eval_size=args.eval_size,
        out=str(work), progress=False, **search,
    )  # fmt: skip
    return Pipeline(config)


def run_method(base: Pipeline, method: str, same_time_s: float | None, args) -> dict:
    """Search with ``method`` (sharing the base pipeline's stages); plan and search figures."""
    c = base.config
    study = f"{method}-{c.budget_mb}-{c.abits[0]}"
    changes = {
        "ilp": {},
        "ilp-rerank": {"rerank": 8},
        "optuna-proxy": {"search": "optuna", "objective": "proxy", "trials": args.trials,
                         "study": study},
        "optuna-measured": {"search": "optuna", "objective": "measured", "trials": args.trials,
                            "study": study},
        "optuna-measured-same-time": {"search": "optuna", "objective": "measured",
                                      "trials": 10_000, "search_timeout_s": same_time_s,
                                      "study": study},
    }[method]  # fmt: skip
    pipe = base.variant(**changes)
    t0 = time.perf_counter()
    plan, result = pipe.search()
    seconds = time.perf_counter() - t0
    st = result.stats
    return {
        "method": method, "search_s": seconds, "bytes": plan.totals["bytes"],
        "avg_w_bits": plan.totals["avg_weight_bits"],
        "predicted": plan.totals["predicted_loss_increase"],
        "trials": st.get("trials_complete"), "heldout": st.get("best_metrics"),
        "plan": plan,
    }  # fmt: skip


def evaluate(base: Pipeline, plan, jpeg) -> dict:
    q = base.quantized_model(plan)
    return {"lossless": top1(q, base.eval_data), "jpeg": None if jpeg is None else top1(q, jpeg)}


def run_setting(args, budget, label, abits, work: Path, jpeg, done: dict) -> list[dict]:
    key = f"{budget}/{label}"
    if key in done:
        return done[key]
    base = pipeline(args, budget, abits, work / key.replace("/", "-"))
    base.run_dir()
    base.sensitivity()
    rows, rerank_s = [], None
    for method in ("ilp", "ilp-rerank", "optuna-proxy", "optuna-measured",
                   "optuna-measured-same-time"):  # fmt: skip
        row = run_method(base, method, rerank_s, args)
        if method == "ilp-rerank":
            rerank_s = row["search_s"]
        row.update(evaluate(base, row.pop("plan"), jpeg))
        row.update(budget_mb=budget, setting=label)
        log(f"{key} {method}: {json.dumps({k: v for k, v in row.items() if k != 'heldout'})}")
        rows.append(row)
    base.close()
    return rows


def render(data: dict) -> str:
    header = ["budget MB", "acts", "search", "search s", "trials", "held-out loss",
              "held-out top-1", "mean w bits", "lossless top-1", "jpeg top-1"]  # fmt: skip
    body = []
    for r in data["rows"]:
        h = r.get("heldout") or {}
        body.append([
            r["budget_mb"], r["setting"], r["method"], f"{r['search_s']:.1f}",
            r["trials"] if r["trials"] is not None else "",
            f"{h['loss']:.4f}" if "loss" in h else "", f"{h['top1']:.2f}" if "top1" in h else "",
            f"{r['avg_w_bits']:.3f}", f"{r['lossless']:.2f}",
            "" if r["jpeg"] is None else f"{r['jpeg']:.2f}",
        ])  # fmt: skip
    return "\n".join(
        [
            TARGET,
            "",
            f"Model {data['model']}; test top-1 on {data['eval_lossless']} lossless/test images "
            f"and {data['eval_jpeg']} jpeg/test images (BatchNorm correction on). Held-out: "
            f"{data['heldout']} lossless/train images after the 512 calibration ones. Search "
            "times include every measurement; `optuna-measured-same-time` was stopped after "
            "the re-ranking's wall time.",
            "",
            md_table(header, body),
            "",
            *reading(data["rows"]),
        ]
    )


def reading(rows: list[dict]) -> list[str]:
    out = ["Reading:", ""]
    for key in sorted({(r["budget_mb"], r["setting"]) for r in rows}):
        group = [r for r in rows if (r["budget_mb"], r["setting"]) == key]
        ilp = next(r for r in group if r["method"] == "ilp")
        best = max(group, key=lambda r: r["lossless"])
        gain = {
            t: (best[t] - ilp[t]) if best[t] is not None else None for t in ("lossless", "jpeg")
        }
        jpeg = "" if gain["jpeg"] is None else f", jpeg {gain['jpeg']:+.2f}"
        out.append(
            f"- {key[0]} MB {key[1]}: best on lossless/test is `{best['method']}` "
            f"({best['search_s']:.0f} s of search): lossless {gain['lossless']:+.2f}{jpeg} "
            "points against the plain ILP."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir(), "hawq_bench_optuna")))
    ap.add_argument("--budgets", default="0.32,0.25", help="comma list of MB budgets")
    ap.add_argument("--settings", default="A32,A8", help="comma list of A32, A8")
    args = ap.parse_args()
    setup_torch()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    header = Header()
    args.model = "resnet20" if args.quick else "resnet56"
    args.trials = args.trials or (10 if args.quick else 100)
    args.eval_size = 200 if args.quick else 0
    budgets = (0.09,) if args.quick else tuple(float(b) for b in args.budgets.split(","))
    settings = {k: SETTINGS[k] for k in args.settings.split(",")}
    work = Path(args.work + ("-quick" if args.quick else ""))
    work.mkdir(parents=True, exist_ok=True)
    done_file = work / "rows.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    jpeg = None
    if not args.quick and (JPEG / "test").is_dir():
        probe = pipeline(args, budgets[0], (32,), work / "probe")
        jpeg = load_subset("imagefolder", JPEG, "test", probe.loaded.preprocess, 0, 0,
                           in_memory=False, num_workers=2)  # fmt: skip
    rows = []
    for budget in budgets:
        for label, abits in settings.items():
            done[f"{budget}/{label}"] = run_setting(args, budget, label, abits, work, jpeg, done)
            done_file.write_text(json.dumps(done))
            rows += done[f"{budget}/{label}"]
    data = {"model": args.model, "rows": rows, "eval_lossless": 200 if args.quick else 1000,
            "eval_jpeg": 0 if jpeg is None else len(jpeg), "heldout": 1000}  # fmt: skip
    out_dir = Path(tempfile.gettempdir(), "hawq_bench_quick") if args.quick else RESULTS
    title = "Optuna search on measured accuracy" + (" (QUICK smoke test)" if args.quick else "")
    md, js = write_results("optuna_search", header, title, render(data), data, out_dir)
    log(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
