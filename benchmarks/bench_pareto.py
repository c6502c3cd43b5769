"""Pareto fronts of ResNet-56 on CIFAR-10 through ``hawq-search pareto``: top-1 against size
(0.20 ... 0.60 MB, 9 budgets, weights only) and against NVIDIA T4 latency (batch 1, 0.37 ...
0.45 ms, 5 budgets, 4/8-bit activations), each plan measured on the 1,000 exact-pixel test
images, next to every uniform plan and the float model.

Run from the repository root::

    python benchmarks/bench_pareto.py

copies each run's ``pareto.json``, ``pareto.png`` and ``report.md`` to
``benchmarks/results/pareto_<front>.{json,png,md}``, the command and machine at the top of the
``.md``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LOSSLESS, RESULTS, WEIGHTS, Header, display_path, log  # noqa: E402

CLI = str(Path(sys.executable).with_name("hawq-search"))
FRONTS = {
    "size": ["--budgets-mb", "0.2:0.6:9", "--abits", "32"],
    "t4_latency": [
        "--accelerator",
        "nvidia_t4",
        "--abits",
        "4,8",
        "--latencies-ms",
        "0.37:0.45:5",
    ],  # fmt: skip
}


def run_front(name: str, extra: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix=f"hawq_pareto_{name}_"))
    cmd = [CLI, "pareto", "--dataset", "imagefolder", "--data-dir", str(LOSSLESS),
           "--weights-dir", str(WEIGHTS), "--out", str(out / "run"), "--quiet", *extra]  # fmt: skip
    header = Header()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}: {proc.stderr[-1000:]}")
    shown = shlex.join(
        ["hawq-search"] + [display_path(a) if a.startswith("/") else a for a in cmd[1:]]
    ).replace(display_path(out / "run"), "<fresh tmp dir>")
    for suffix in ("json", "png"):
        shutil.copy(out / "run" / f"pareto.{suffix}", RESULTS / f"pareto_{name}.{suffix}")
    report = (out / "run" / "report.md").read_text()
    report = report.replace("`pareto/", "`<run>/pareto/").replace(
        "`pareto.png`", f"`pareto_{name}.png`"
    )
    lines = header.markdown(f"Pareto front: {name}").splitlines()
    lines.insert(lines.index("```") + 1, shown)
    (RESULTS / f"pareto_{name}.md").write_text(
        "\n".join(lines)
        + f"\n- hawq-search wall time: {wall:.0f} s\n\n"
        + f"![pareto_{name}](pareto_{name}.png)\n\n"
        + report
    )
    log(f"{name}: {wall:.0f} s, wrote {RESULTS / f'pareto_{name}.md'}")


def main() -> None:
    for name, extra in FRONTS.items():
        run_front(name, extra)


if __name__ == "__main__":
    main()
