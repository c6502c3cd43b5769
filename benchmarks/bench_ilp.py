"""ILP solve time of ``IlpSearch`` (core method: LP bound, reduced-cost fixing, core MILP) on
every budget of a sweep, and beside plain HiGHS on the one-hot formulation.

* ResNet-56 (CIFAR-10), per channel, 8-bit activations: the real default 'fisher' sensitivity
  table of the Pipeline, computed in fp32 (512 images of ``cifar10-lossless/train``, seed 0);
  size budgets 0.20, 0.21, ..., 0.60 MB (41 budgets) each with a BOPs budget of 60 % of
  uniform W8A8 BOPs.
  Target: every budget proves a relative gap of 1e-4 within 2 s.
* torchvision resnet50 with random weights (``torch.manual_seed(0)``), per channel, weight options
  2,3,4,5,6,8, 8-bit activations, synthetic sensitivity table: channel loss =
  ``s_c * ||Q_b(W_c) - W_c||^2`` with ``s_c`` log-normal (numpy seed 0). Size budget at 4.5 mean
  weight bits (midway between uniform 4 and uniform 5 bytes); cases: size only; size + BOPs
  (60 % of W8A8); size + latency + energy (70 % of the W8A8 plan's) on the ``nvidia_t4`` and
  ``bitfusion_45nm`` profiles, these with activation options 4 and 8 searched per activation
  group (synthetic activation losses as in ``bench_accelerators.py``). Each case is solved by the core method and, in the same run, by
  plain HiGHS (``IlpSearch(method="highs")``: scipy.optimize.milp on the whole one-hot model).
  Target: each within 2 s and at least 6x faster than plain HiGHS.

Times are the wall time of ``IlpSearch.solve`` (model assembly included), after
``wait_for_idle()``; the core method is repeated ``--repeats`` times (median and max reported;
time limit 10 s per ResNet-56 budget, 30 s per ResNet-50 case), plain HiGHS once (120 s).

Run from the repository root::

    python benchmarks/bench_ilp.py

writes ``benchmarks/results/ilp_solve_time.md`` and ``.json``; ``--quick`` (one repeat, every
fifth ResNet-56 budget, no plain HiGHS on the accelerator cases) writes into ``/tmp`` instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    LOSSLESS,
    RESULTS,
    WEIGHTS,
    Header,
    idle_record,
    log,
    md_table,
    median,
    setup_torch,
    write_results,
)

# Imported after hawq_search: `import cost_models.size` as the first import of the process fails
# with a circular ImportError (cost_models.size -> hawq_search/__init__ -> hawq_search.plan ->
# cost_models.size), a library bug reported separately.
from cost_models.registry import load_accelerator  # noqa: E402
from cost_models.size import layer_weight_bytes  # noqa: E402
from hawq_search.config import RunConfig  # noqa: E402
from hawq_search.graph.trace import trace_model  # noqa: E402
from hawq_search.pipeline import Pipeline  # noqa: E402
from hawq_search.problem_builder import build_problem  # noqa: E402
from hawq_search.sensitivity.fisher import weight_deltas  # noqa: E402
from hawq_search.sensitivity.table import SensitivityTable  # noqa: E402
from searches.ilp import IlpSearch  # noqa: E402

W_BITS = (2, 3, 4, 5, 6, 8)
ABITS = (4, 8)
GAP = 1e-4
R56_TIME_LIMIT = 10.0  # a budget that needs more misses the 2 s target anyway
TIME_LIMIT = 30.0
PLAIN_TIME_LIMIT = 120.0
TARGET_S = 2.0
TARGET_RATIO = 6.0
R56_BUDGETS_MB = tuple(round(0.20 + 0.01 * k, 2) for k in range(41))
ACCELERATORS = ("nvidia_t4", "bitfusion_45nm")


def w8a8_bops(graph) -> float:
    return float(sum(layer.macs for layer in graph.layers) * 8 * 8)


def uniform_bytes(graph, bits: int) -> int:
    return sum(layer_weight_bytes(layer, [bits] * layer.out_channels) for layer in graph.layers)


def resnet56_session(abits: tuple[int, ...], tmp: Path) -> Pipeline:
    """The ResNet-56 session both parts use; its run directory caches the sensitivity table."""
    return Pipeline(
        RunConfig(
            model="resnet56",
            weights_dir=str(WEIGHTS),
            dataset="imagefolder",
            data_dir=str(LOSSLESS),
            calib_size=512,
            seed=0,
            abits=abits,
            # fp32 sensitivities: the same table on every CPU (under bf16 the losses, and with
            # them the hard budgets, move with the CPU's bf16 support)
            precision="fp32",
            out=str(tmp / f"r56-a{'-'.join(map(str, abits))}"),
            progress=False,
        )
    )


def resnet50_table(seed: int = 0):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50().eval()
    graph = trace_model(model, torch.zeros(1, 3, 224, 224))
    modules = dict(model.named_modules())
    rng = np.random.default_rng(seed)
    weight = {}
    t0 = time.perf_counter()
    for layer in graph.layers:
        d = weight_deltas(modules[layer.name].weight, W_BITS)  # (n_bits, C, K)
        err = (d * d).sum(2).T.double().numpy()  # (C, n_bits)
        scale = rng.lognormal(mean=0.0, sigma=1.0, size=(layer.out_channels, 1))
        weight[layer.name] = scale * err
    table_s = time.perf_counter() - t0
    act = {g: np.zeros(1) for g in graph.act_groups}
    table = SensitivityTable("synthetic", W_BITS, (8,), weight, act, {"seconds": table_s})
    return graph, table, table_s


def timed(problem, search: IlpSearch, repeats: int) -> dict:
    """Wall time, status and proven gap of ``repeats`` solves."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = search.solve(problem)
        wall = time.perf_counter() - t0
        runs.append(
            {
                "wall_s": wall,
                "build_s": res.stats.get("build_time_s"),
                "status": res.status.value,
                "mip_gap": res.stats.get("mip_gap"),
                "objective": res.objective,
                "rounds": res.stats.get("rounds"),
                "core_columns": res.stats.get("core_columns"),
                "n_vars": res.stats.get("n_vars"),
                "method": res.stats.get("method"),
                "n_configurations": res.stats.get("n_configurations"),
                "n_binary": res.stats.get("n_binary"),
                "costs": res.costs,
            }
        )
    walls = [r["wall_s"] for r in runs]
    gaps = [r["mip_gap"] for r in runs if r["mip_gap"] is not None]
    return {
        "runs": runs,
        "median_s": median(walls),
        "max_s": max(walls),
        "statuses": sorted({r["status"] for r in runs}),
        "max_gap": max(gaps) if gaps else None,
        "objective": runs[0]["objective"],
    }


def resnet56_sweep(tmp: Path, repeats: int, quick: bool) -> list[dict]:
    """Per channel, A8, size + BOPs: one case per size budget of the sweep."""
    session = resnet56_session((8,), tmp)
    table, graph = session.sensitivity("fisher"), session.graph
    bops = 0.6 * w8a8_bops(graph)
    budgets = R56_BUDGETS_MB[::5] if quick else R56_BUDGETS_MB
    out = []
    for mb in budgets:
        problem = build_problem(
            graph, table, granularity="channel", size_budget_bytes=mb * 1e6, bops_budget=bops
        )
        r = timed(problem, IlpSearch(time_limit=R56_TIME_LIMIT, mip_rel_gap=GAP), repeats)
        r.update({"size_mb": mb, "bops_budget": bops, "n_groups": len(problem.weight_groups)})
        log(
            f"resnet56 {mb:.2f} MB: {r['statuses']} gap {_gap(r['max_gap'])} max {r['max_s']:.3f} s"
        )
        out.append(r)
    return out


def with_act_options(graph, table, seed: int = 1):
    """``table`` with activation options 4 and 8 (the accelerator cases, as in
    bench_accelerators.py): ``lognormal(0, 1) * L4_g * 16^((4 - a) / 4)``, ``L4_g`` the weight
    loss at 4 bits of the layers reading the group, so 8-bit activations cost 1/16 of 4-bit."""
    rng = np.random.default_rng(seed)
    act = {}
    for g, names in graph.act_groups.items():
        l4 = sum(table.weight[n][:, W_BITS.index(4)].sum() for n in names)
        act[g] = rng.lognormal(0.0, 1.0) * l4 * np.array([16.0 ** ((4 - a) / 4) for a in ABITS])
    return SensitivityTable("synthetic", W_BITS, ABITS, table.weight, act, table.meta)


def resnet50_problems(graph, table) -> list[tuple[str, object]]:
    """The four ResNet-50 cases: (label, problem); the accelerator ones with activation options
    4 and 8 (with 8 only, 70 % of the W8A8 latency is below the T4's smallest reachable)."""
    size = 0.5 * (uniform_bytes(graph, 4) + uniform_bytes(graph, 5))
    bops = 0.6 * w8a8_bops(graph)
    out = [
        ("size", build_problem(graph, table, granularity="channel", size_budget_bytes=size)),
        ("size + BOPs 60 %", build_problem(graph, table, granularity="channel",
                                           size_budget_bytes=size, bops_budget=bops)),
    ]  # fmt: skip
    table48 = with_act_options(graph, table)
    for accel in ACCELERATORS:
        cm = load_accelerator(accel)
        u8 = [cm.plan_cost(layer, [8] * layer.out_channels, 8) for layer in graph.layers]
        lat8, en8 = sum(c.latency_s for c in u8), sum(c.energy_j for c in u8)
        problem = build_problem(
            graph, table48, granularity="channel", size_budget_bytes=size, cost_model=cm,
            latency_budget_s=0.7 * lat8, energy_budget_j=0.7 * en8,
        )  # fmt: skip
        out.append((f"A4/A8, size + latency + energy 70 % ({accel}, batch {cm.batch})", problem))
    return out


def resnet50_cases(graph, table, repeats: int, quick: bool) -> list[dict]:
    out = []
    for label, problem in resnet50_problems(graph, table):
        log(f"resnet50 {label}")
        core = timed(problem, IlpSearch(time_limit=TIME_LIMIT, mip_rel_gap=GAP), repeats)
        plain = None
        if not (quick and "latency" in label):
            search = IlpSearch(time_limit=PLAIN_TIME_LIMIT, mip_rel_gap=GAP, method="highs")
            plain = timed(problem, search, 1)
        ratio = plain["median_s"] / core["median_s"] if plain else None
        out.append(
            {"case": label, "n_groups": len(problem.weight_groups), "core": core,
             "plain": plain, "ratio": ratio}
        )  # fmt: skip
        log(f"  core {core['median_s']:.3f} s {core['statuses']}, plain "
            f"{plain['median_s'] if plain else float('nan'):.2f} s, ratio {ratio}")  # fmt: skip
    return out


def resnet50_info(graph, table_s: float) -> dict:
    return {
        "layers": len(graph.layers),
        "channels": sum(layer.out_channels for layer in graph.layers),
        "params": sum(layer.params for layer in graph.layers),
        "table_seconds": table_s,
        "uniform4_bytes": uniform_bytes(graph, 4),
        "uniform5_bytes": uniform_bytes(graph, 5),
        "size_budget": 0.5 * (uniform_bytes(graph, 4) + uniform_bytes(graph, 5)),
        "w8a8_bops": w8a8_bops(graph),
    }


def _n_vars(n) -> str:
    """Columns of the MILP model the core method built; none when the knapsack or the block
    search proved the gap without one."""
    return f"{n:,}" if n else "none (no MILP model)"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _gap(g) -> str:
    return "" if g is None else f"{g:.2e}"


def _met(case: dict) -> bool:
    """Within the time target and proven: optimal within the gap, or infeasible."""
    if case["max_s"] > TARGET_S or len(case["statuses"]) != 1:
        return False
    if case["statuses"] == ["infeasible"]:
        return True
    return (
        case["statuses"] == ["optimal"] and case["max_gap"] is not None and case["max_gap"] <= GAP
    )


def render_r56(sweep: list[dict]) -> list[str]:
    ok = [_met(c) for c in sweep]
    rows = [
        [f"{c['size_mb']:.2f}", c["statuses"][0] if len(c["statuses"]) == 1 else c["statuses"],
         _gap(c["max_gap"]), f"{c['median_s']:.3f}", f"{c['max_s']:.3f}",
         c["runs"][0]["rounds"], c["runs"][0]["core_columns"], "" if c["objective"] is None else f"{c['objective']:.6g}",
         _verdict(k)]
        for c, k in zip(sweep, ok, strict=True)
    ]  # fmt: skip
    walls = [c["max_s"] for c in sweep]
    return [
        "## ResNet-56 per channel, A8, size + BOPs (60 % W8A8)",
        "",
        f"{sum(ok)} of {len(sweep)} budgets proved gap <= {GAP:g} within {TARGET_S:g} s "
        f"(slowest {max(walls):.3f} s, median {median(walls):.3f} s; time limit "
        f"{R56_TIME_LIMIT:g} s). Rounds = core MILPs solved (none: the knapsack bound and greedy "
        "plan proved the gap, or the bound proved the budgets infeasible); core columns = model "
        "columns left free in each round (the knapsack path's own core MILPs are not counted).",
        "",
        md_table(
            [
                "size budget (MB)",
                "status",
                "gap (max)",
                "time median (s)",
                "time max (s)",
                "rounds",
                "core columns",
                "objective",
                "target met",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def render_r50(cases: list[dict], info: dict) -> list[str]:
    rows = []
    for c in cases:
        core, plain = c["core"], c["plain"]
        ok = _met(core) and (c["ratio"] or 0) >= TARGET_RATIO
        rows.append([
            c["case"], f"{c['n_groups']:,}", _n_vars(core["runs"][0]["n_vars"]),
            f"{core['median_s']:.3f}", f"{core['max_s']:.3f}", ", ".join(core["statuses"]),
            _gap(core["max_gap"]),
            f"{plain['median_s']:.2f}" if plain else "not run",
            ", ".join(plain["statuses"]) if plain else "",
            _gap(plain["max_gap"]) if plain else "",
            f"{c['ratio']:.1f}x" if c["ratio"] else "", _verdict(ok),
        ])  # fmt: skip
    return [
        "## torchvision ResNet-50 per channel (random weights, synthetic table)",
        "",
        f"{info['layers']} layers, {info['channels']:,} output channels, {info['params']:,} "
        f"weights; table built in {info['table_seconds']:.1f} s; size budget "
        f"{info['size_budget']:,.0f} bytes (mean of uniform-4 {info['uniform4_bytes']:,} and "
        f"uniform-5 {info['uniform5_bytes']:,}); BOPs budget 60 % of W8A8 "
        f"({0.6 * info['w8a8_bops']:.4g}); accelerator budgets 70 % of the uniform W8A8 plan's "
        "latency and energy (`CostModel.plan_cost`). Plain HiGHS: one run, time limit "
        f"{PLAIN_TIME_LIMIT:g} s (a time-limited run makes the ratio a lower bound).",
        "",
        md_table(
            [
                "case",
                "weight groups",
                "n_vars (core)",
                "core median (s)",
                "core max (s)",
                "core status",
                "core gap",
                "plain HiGHS (s)",
                "plain status",
                "plain gap",
                "speed-up",
                "target met",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def render(data: dict, args) -> str:
    parts = [
        f"Targets: every ResNet-56 budget proves gap <= {GAP:g} within {TARGET_S:g} s; every "
        f"ResNet-50 case within {TARGET_S:g} s and >= {TARGET_RATIO:g}x faster than plain HiGHS.",
        "",
        f"Solver: `searches.ilp.IlpSearch(mip_rel_gap={GAP:g})` (core method: for a separable "
        "knapsack the Lagrangian bound, a greedy plan and knapsack core MILPs; for activation "
        "options, tiles and kernel overheads, the block-configuration search (a Lagrangian bound "
        "that keeps activation groups integral, one knapsack per configuration left); otherwise "
        "LP bound, reduced-cost fixing, core MILP; MILPs by scipy.optimize.milp / HiGHS); times are wall times of "
        f"`IlpSearch.solve` including model assembly, {args.repeats} run(s) per case. Gap = the "
        "relative gap the solver proved, on the loss the search can still remove.",
        "",
        f"Before timing: wait_for_idle: load seen {data['idle']['load_seen']} (idle: "
        f"{data['idle']['idle']}, waited {data['idle']['waited_s']} s). 1/5/15-min load after "
        f"the solves: {data['loadavg_after']}.",
        "",
    ]
    if data.get("resnet56"):
        parts += render_r56(data["resnet56"])
    parts += render_r50(data["resnet50_cases"], data["resnet50"])
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--idle-timeout", type=float, default=900.0)
    ap.add_argument("--only-resnet50", action="store_true", help="skip the ResNet-56 sweep")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    setup_torch()
    warnings.simplefilter("ignore")
    header = Header()
    tmp = Path(tempfile.mkdtemp(prefix="hawq_bench_ilp_"))
    log("preparing (sensitivity tables are computed before the idle wait)")
    data: dict = {"args": vars(args)}
    if not args.only_resnet50:
        resnet56_session((8,), tmp).sensitivity("fisher")  # cached in tmp for the sweep
    graph, table, table_s = resnet50_table()
    data["idle"] = idle_record(timeout_s=args.idle_timeout)
    if not args.only_resnet50:
        data["resnet56"] = resnet56_sweep(tmp, args.repeats, args.quick)
    data["resnet50_cases"] = resnet50_cases(graph, table, args.repeats, args.quick)
    data["resnet50"] = resnet50_info(graph, table_s)
    data["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    out_dir = Path(tempfile.gettempdir(), "hawq_bench_quick") if args.quick else RESULTS
    title = "ILP solve time" + (" (QUICK smoke test)" if args.quick else "")
    md, js = write_results("ilp_solve_time", header, title, render(data, args), data, out_dir)
    log(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
