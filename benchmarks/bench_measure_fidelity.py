"""How well do held-out measurements rank plans the way test top-1 does?

A measured search (``--search optuna`` on the measured objective, ``--rerank K``) can only beat
the plain ILP where its held-out measurement orders plans as the test sets do. This benchmark
draws plans the way an Optuna trial makes them -- the exact ILP on the predicted losses with
every layer's losses multiplied by a seeded log-uniform factor in [1/4, 4] (plan 0: all factors
1, the plain ILP optimum) -- and scores each plan

* on held-out images of the training split, as the measured objective does: the 1,000
  ``cifar10-lossless/train`` images after the 512 calibration ones (cross-entropy, KL
  divergence from the float model's outputs, top-1), and the same 1,000 images from
  ``cifar10-jpeg/train`` (the JPEG copies: a shifted distribution the model did not fit);
* on the test sets: ``cifar10-lossless/test`` (1,000 images) and the first 2,000 seeded
  ``cifar10-jpeg/test`` images.

It reports the Spearman rank correlation of every held-out measurement with each test top-1,
and the test top-1 of the plan each measurement would pick. ResNet-56, 0.25 MB, weights only,
BatchNorm correction on (the defaults).

Run from the repository root::

    python benchmarks/bench_measure_fidelity.py

writes ``benchmarks/results/measure_fidelity.md`` and ``.json``; finished plans are kept in
the work directory (default ``/tmp/hawq_bench_fidelity``), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

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
from hawq_search.pipeline import Pipeline  # noqa: E402
from searches.ilp import IlpSearch  # noqa: E402

JPEG = SHARED / "data" / "cifar10-jpeg"
HELDOUT = ("lossless held-out", "jpeg held-out")
MEASURES = ("ce", "kl", "top1")
TESTS = ("lossless test top1", "jpeg test top1")


@torch.no_grad()
def logits_and_labels(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    outs, labels = [], []
    for x, y in data.batches(250):
        outs.append(model(x).float())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def scores(logits, labels, reference) -> dict[str, float]:
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True,
                  reduction="batchmean")  # fmt: skip
    return {
        "ce": float(F.cross_entropy(logits, labels)),
        "kl": float(kl),
        "top1": float((logits.argmax(1) == labels).float().mean() * 100),
    }


def make_plans(pipe: Pipeline, n: int, seed: int):
    """Plan k: the ILP optimum with seeded per-layer loss multipliers (k = 0: none)."""
    problem = pipe.problem(pipe.sensitivity())
    layers = list(problem.layer_names)
    rng = np.random.default_rng(seed)
    for k in range(n):
        factors = np.exp(rng.uniform(np.log(0.25), np.log(4.0), len(layers)))
        w = (
            dict.fromkeys(layers, 1.0)
            if k == 0
            else dict(zip(layers, factors.tolist(), strict=True))
        )
        res = IlpSearch().solve(problem.rescaled(w, {}))
        sol = res.best
        loss = problem.objective_and_totals(sol.w_choice, sol.a_choice)[0]
        yield k, pipe.make_plan(dict(sol.layer_bits), dict(sol.act_bits)), float(loss)


def run(args, work: Path) -> list[dict]:
    cfg = RunConfig(
        model="resnet56", dataset="imagefolder", data_dir=str(LOSSLESS), weights_dir=str(WEIGHTS),
        calib_size=512, heldout_size=1000, budget_mb=args.budget_mb, seed=0, out=str(work / "run"),
        progress=False,
    )  # fmt: skip
    pipe = Pipeline(cfg)
    pre = pipe.loaded.preprocess
    sets = {
        "lossless held-out": pipe.measure.data,
        "jpeg held-out": load_subset("imagefolder", str(JPEG), "train", pre, 1000, 0, skip=512),
        "lossless test top1": load_subset("imagefolder", str(LOSSLESS), "test", pre, 1000, 0),
        "jpeg test top1": load_subset("imagefolder", str(JPEG), "test", pre, args.jpeg_test, 0),
    }
    fp = pipe.model.eval()
    ref = {name: logits_and_labels(fp, sets[name])[0] for name in HELDOUT}
    store = work / "plans.jsonl"
    done = {}
    if store.is_file():
        done = {r["k"]: r for r in map(json.loads, store.read_text().splitlines())}
    rows = []
    for k, plan, proxy in make_plans(pipe, args.plans, args.seed):
        if k in done:
            rows.append(done[k])
            continue
        model = pipe.quantized_model(plan).eval()
        row = {"k": k, "proxy": proxy, "mean_w_bits": plan.totals["avg_weight_bits"]}
        for name in HELDOUT:
            row[name] = scores(*logits_and_labels(model, sets[name]), ref[name])
        for name in TESTS:
            logits, labels = logits_and_labels(model, sets[name])
            row[name] = float((logits.argmax(1) == labels).float().mean() * 100)
        with store.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"plan {k}: proxy {proxy:.4f}, lossless {row[TESTS[0]]:.2f}, jpeg {row[TESTS[1]]:.2f}")
        rows.append(row)
    return rows


def render(rows: list[dict], args) -> str:
    metrics = [("proxy (predicted loss)", lambda r: -r["proxy"])]
    for name in HELDOUT:
        for m in MEASURES:
            sign = 1.0 if m == "top1" else -1.0
            metrics.append((f"{name} {m}", lambda r, n=name, m=m, s=sign: s * r[n][m]))
    ilp = rows[0]
    table = []
    for label, key in metrics:
        rho = [spearmanr([key(r) for r in rows], [r[t] for r in rows])[0] for t in TESTS]
        pick = max(rows, key=key)
        table.append([label, f"{rho[0]:+.2f}", f"{rho[1]:+.2f}", pick["k"],
                      f"{pick[TESTS[0]] - ilp[TESTS[0]]:+.2f}",
                      f"{pick[TESTS[1]] - ilp[TESTS[1]]:+.2f}"])  # fmt: skip
    best = [max(r[t] for r in rows) - ilp[t] for t in TESTS]
    return "\n".join([
        f"ResNet-56, {args.budget_mb} MB, weights only, BatchNorm correction on; {len(rows)} "
        f"plans (plan 0 = the plain ILP optimum: lossless test {ilp[TESTS[0]]:.2f}, jpeg test "
        f"{ilp[TESTS[1]]:.2f} on {args.jpeg_test} images); multipliers seed {args.seed}.",
        "",
        "Spearman rho of each held-out measurement (higher is better: CE and KL negated) "
        "with each test top-1 over the plans, and the test top-1 of the plan it ranks first, "
        "against the plain ILP plan:",
        "",
        md_table(["measurement", "rho lossless test", "rho jpeg test", "picks plan",
                  "lossless test vs ILP", "jpeg test vs ILP"], table),  # fmt: skip
        "",
        f"Best of all {len(rows)} plans against the ILP plan (an oracle that sees the test "
        f"sets): lossless {best[0]:+.2f}, jpeg {best[1]:+.2f} points. One image is 0.1 point "
        f"of the 1,000 lossless test images and {100 / args.jpeg_test:.2f} of the jpeg ones.",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--plans", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-mb", type=float, default=0.25)
    ap.add_argument("--jpeg-test", type=int, default=2000)
    ap.add_argument("--work-dir", type=Path,
                    default=Path(tempfile.gettempdir(), "hawq_bench_fidelity"))  # fmt: skip
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    setup_torch()
    header = Header()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = run(args, args.work_dir)
    data = {"rows": rows, "args": {k: v for k, v in vars(args).items() if not k.endswith("dir")}}
    md, _ = write_results("measure_fidelity", header, "Held-out measurements against test top-1",
                          render(rows, args), data, args.out_dir)  # fmt: skip
    log(f"wrote {md}")


if __name__ == "__main__":
    main()
