"""End-to-end wall time of the CLI, in a fresh subprocess (imports included).

    hawq-search run --budget-mb 0.5 --dataset imagefolder \
        --data-dir ../shared/data/cifar10-lossless --weights-dir ../shared/weights \
        --out <fresh tmp dir> --quiet

(ResNet-56, evaluation on the 1,000 exact-pixel test images), 3 runs after ``wait_for_idle()``,
median; then one run with ``--abits 32``, and, on a CPU with native bf16, 3 runs with torch's and
oneDNN's kernels restricted to AVX2 (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``: a CPU
without native bf16, where ``--precision auto`` picks fp32). Each run's ``summary.json`` is parsed (top-1,
plan bytes, the CLI's own timings).

Run from the repository root::

    python benchmarks/bench_end_to_end.py

writes ``benchmarks/results/end_to_end.md`` and ``.json``; ``--quick`` (one run, --eval-size 200)
writes into ``/tmp`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    LOSSLESS,
    RESULTS,
    WEIGHTS,
    Header,
    display_path,
    idle_record,
    log,
    md_table,
    median,
    setup_torch,
    write_results,
)

from hawq_search.runtime import cpu_has_native_bf16  # noqa: E402

CLI = str(Path(sys.executable).with_name("hawq-search"))
TARGET = "Target: <= 60 s wall time for the default run (ResNet-56, 0.5 MB), imports included."


# A CPU without AVX-512 and native bf16, on this hardware: torch's and oneDNN's kernels
# restricted to AVX2 (``precision=auto`` then picks fp32, as on a Zen 3 or an older Xeon).
NO_BF16_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run_cli(extra: list[str], quick: bool, env: dict | None = None) -> dict:
    out = tempfile.mkdtemp(prefix="hawq_e2e_")
    cmd = [
        CLI,
        "run",
        "--budget-mb",
        "0.5",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(LOSSLESS),
        "--weights-dir",
        str(WEIGHTS),
        "--out",
        out,
        "--quiet",
        *extra,
    ]
    if quick:
        cmd += ["--eval-size", "200"]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    rec = {
        "cmd": shlex.join(
            [*(f"{k}={v}" for k, v in (env or {}).items()), "hawq-search"]
            + [display_path(a) if os.path.isabs(a) and a != out else a for a in cmd[1:]]
        ).replace(out, "<fresh tmp dir>"),
        "returncode": proc.returncode,
        "wall_s": wall,
        "load1_start": round(load0, 2),
        "load1_end": round(os.getloadavg()[0], 2),
    }
    if proc.returncode != 0:
        rec["stderr"] = proc.stderr[-2000:]
        log(f"CLI failed ({proc.returncode}): {proc.stderr[-500:]}")
        return rec
    s = json.loads((Path(out) / "summary.json").read_text())
    rec.update(
        {
            "top1": s["top1"],
            "plan_bytes": s["plan_bytes"],
            "uniform_bytes": s["uniform_bytes"],
            "uniform_bits": s["uniform_bits"],
            "avg_weight_bits": s["avg_weight_bits"],
            "timings_s": s["timings_s"],
            "solver": s["solver"],
            "eval_images": s["eval_images"],
            "calib_images": s["calib_images"],
            "sensitivity_cached": s["sensitivity_cached"],
            "runtime": s.get("runtime", {}),
        }
    )
    log(f"wall {wall:.1f} s, top1 {s['top1']}, timings {s['timings_s']}")
    return rec


def render(data: dict) -> str:
    rows = []
    for label, runs in data["runs"].items():
        for k, r in enumerate(runs, 1):
            if r["returncode"] != 0:
                rows.append([label, k, f"{r['wall_s']:.1f}", f"exit {r['returncode']}"] + [""] * 9)
                continue
            t = r["timings_s"]
            rows.append(
                [
                    label,
                    k,
                    f"{r['wall_s']:.1f}",
                    f"{r['top1']['fp']:.2f}",
                    f"{r['top1']['uniform']:.2f}",
                    f"{r['top1']['plan']:.2f}",
                    f"{r['plan_bytes']:,}",
                    f"{r['avg_weight_bits']:.2f}",
                    f"{t['sensitivity']:.1f}",
                    f"{t['search']:.1f}",
                    f"{t['evaluation']:.1f}",
                    r.get("runtime", {}).get("precision", "?"),
                    f"{r['load1_start']} / {r['load1_end']}",
                ]
            )
    med_rows = [
        [label, len(runs), f"{median([r['wall_s'] for r in runs]):.1f}"]
        for label, runs in data["runs"].items()
    ]
    first = next(iter(data["runs"].values()))[0]
    return "\n".join(
        [
            TARGET,
            "",
            "Command (the `--out` directory is a fresh temporary directory per run, so nothing "
            "is cached):",
            "",
            "```",
            *(runs[0]["cmd"] for runs in data["runs"].values()),
            "```",
            "",
            f"Before timing: wait_for_idle: load seen {data['idle']['load_seen']} (idle: "
            f"{data['idle']['idle']}, waited {data['idle']['waited_s']} s). Wall time is measured "
            "around the subprocess (Python start-up and imports included); the sensitivity / "
            "search / evaluation columns are the CLI's own `timings_s` from summary.json. "
            "Evaluation covers three PTQ evaluations (float, uniform, plan) of "
            f"{first.get('eval_images', '?')} test images; calibration uses "
            f"{first.get('calib_images', '?')} train images.",
            "",
            md_table(["setting", "runs", "median wall (s)"], med_rows),
            "",
            md_table(
                [
                    "setting",
                    "run",
                    "wall (s)",
                    "top-1 float %",
                    "top-1 uniform %",
                    "top-1 plan %",
                    "plan bytes",
                    "mean w bits",
                    "sensitivity (s)",
                    "search (s)",
                    "evaluation (s)",
                    "precision (auto)",
                    "1-min load start / end",
                ],
                rows,
            ),
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--idle-timeout", type=float, default=900.0)
    ap.add_argument("--runs", type=int, default=None, help="timed default runs (default 3)")
    ap.add_argument("--name", default="end_to_end", help="results file name (without suffix)")
    args = ap.parse_args()
    setup_torch()
    header = Header()
    data: dict = {
        "args": vars(args),
        "cli": "hawq-search (console script next to this interpreter)",
    }
    data["idle"] = idle_record(timeout_s=args.idle_timeout)
    repeats = args.runs or (1 if args.quick else 3)
    data["runs"] = {"default (A8)": [run_cli([], args.quick) for _ in range(repeats)]}
    data["runs"]["--abits 32"] = [run_cli(["--abits", "32"], args.quick)]
    if cpu_has_native_bf16():  # else the default runs already are the no-bf16 case
        data["runs"]["default, no native bf16 (AVX2 kernels)"] = [
            run_cli([], args.quick, NO_BF16_ENV) for _ in range(repeats)
        ]
    data["median_wall_s"] = {k: median([r["wall_s"] for r in v]) for k, v in data["runs"].items()}
    out_dir = Path(tempfile.gettempdir(), "hawq_bench_quick") if args.quick else RESULTS
    title = "End-to-end CLI wall time" + (" (QUICK smoke test)" if args.quick else "")
    md, js = write_results(args.name, header, title, render(data), data, out_dir)
    log(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
