"""Helpers shared by the benchmark scripts: paths, machine facts, idle wait, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from hawq_search.files import jsonable
from hawq_search.runtime import cpu_description

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("HAWQ_SEARCH_SHARED", REPO.parent / "shared"))
LOSSLESS = SHARED / "data" / "cifar10-lossless"
WEIGHTS = SHARED / "weights"
THREADS = 2

__all__ = [
    "REPO",
    "RESULTS",
    "SHARED",
    "LOSSLESS",
    "WEIGHTS",
    "THREADS",
    "log",
    "setup_torch",
    "wait_for_idle",
    "machine_facts",
    "command_line",
    "display_path",
    "median",
    "md_table",
    "Header",
    "write_results",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup_torch(threads: int = THREADS) -> None:
    torch.set_num_threads(threads)


def wait_for_idle(max_load: float = 1.3, timeout_s: float = 900) -> float:
    """Poll the 1-minute load average every 10 s until it is <= ``max_load`` or ``timeout_s``
    has passed; return the last load seen (the caller compares it with ``max_load``)."""
    t0 = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        if load <= max_load or time.monotonic() - t0 >= timeout_s:
            return load
        log(f"waiting for an idle machine: load {load:.2f} > {max_load}")
        time.sleep(10)


def idle_record(max_load: float = 1.3, timeout_s: float = 900) -> dict:
    """Wait for idle and return a record of it for the results file."""
    t0 = time.monotonic()
    load = wait_for_idle(max_load, timeout_s)
    rec = {
        "max_load": max_load,
        "timeout_s": timeout_s,
        "waited_s": round(time.monotonic() - t0, 1),
        "load_seen": round(load, 2),
        "idle": load <= max_load,
    }
    log(f"idle check: {rec}")
    return rec


def machine_facts() -> dict:
    import scipy

    return {
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_description": cpu_description(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def display_path(path: str | os.PathLike) -> str:
    """``path`` as written in results files: relative to the repository root (``../shared/...``
    for the shared data and weights next to it), never an absolute machine path."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    p = Path(os.path.abspath(p))
    for base, prefix in ((REPO, ""), (REPO.parent, "..")):
        try:
            rel = p.relative_to(base)
        except ValueError:
            continue
        return str(Path(prefix, rel)) if prefix else (str(rel) or ".")
    return str(p)


def _display_arg(arg: str) -> str:
    if arg.startswith("--") and "=" in arg:
        opt, val = arg.split("=", 1)
        return f"{opt}={_display_arg(val)}"
    return display_path(arg) if os.path.isabs(arg) else arg


def command_line() -> str:
    """The command that reproduces this run, from the repository root and machine-independent:
    ``python`` (not this interpreter's path), the script relative to the root, and absolute path
    arguments relative to the root."""
    script = display_path(Path(sys.argv[0]).resolve())
    return shlex.join(["python", script, *(_display_arg(a) for a in sys.argv[1:])])


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


class Header:
    """Command, date, machine facts and load averages of one benchmark run."""

    def __init__(self) -> None:
        self.command = command_line()
        self.date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.machine = machine_facts()
        self.load_start = [round(v, 2) for v in os.getloadavg()]
        self.t0 = time.perf_counter()

    def to_dict(self) -> dict:
        return {
            "command": self.command,
            "date": self.date,
            "machine": self.machine,
            "loadavg_start": self.load_start,
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "wall_s": round(time.perf_counter() - self.t0, 1),
        }

    def markdown(self, title: str) -> str:
        d = self.to_dict()
        m = d["machine"]
        return "\n".join(
            [
                f"# {title}",
                "",
                "Reproduce (from the repository root):",
                "",
                "```",
                d["command"],
                "```",
                "",
                f"- date: {d['date']}",
                f"- machine: nproc {m['nproc']}, {m.get('cpu_description', m['cpu'])}, "
                f"torch {m['torch']}, "
                f"torch threads {m['torch_threads']}, scipy {m['scipy']}, python {m['python']}",
                f"- os.getloadavg() at start: {d['loadavg_start']}, at end: {d['loadavg_end']}",
                f"- script wall time: {d['wall_s']} s",
                "",
            ]
        )


def write_results(
    stem: str, header: Header, title: str, body: str, data: dict, out_dir: Path = RESULTS
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (header + body) and ``<stem>.json`` (header + data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    js = out_dir / f"{stem}.json"
    md.write_text(header.markdown(title) + "\n" + body.rstrip() + "\n")
    js.write_text(json.dumps(jsonable({**header.to_dict(), **data}), indent=1) + "\n")
    return md, js
