"""Accelerator-aware search on TinyNet: random latency / energy / size budgets on every built-in
profile are met by the exact cost (one sub-kernel per bit-width group, summed over layers, computed
here independently of the plan's totals); the ILP equals brute force on tiny problems with tile
padding and per-group overheads; infeasible budgets give one clear line; the ``cost`` commands.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import invoke_cli as invoke
from conftest import remove_user_env, tiny_session, write_user_env
from torch import nn

from cost_models.base import Cost, CostModel, weight_bytes_of
from cost_models.registry import PROFILE_DIR, list_accelerators, load_accelerator
from hawq_search.config import RunConfig
from hawq_search.core.exceptions import InfeasibleBudgetError, UserInputError
from hawq_search.graph.trace import trace_model
from hawq_search.pipeline import Pipeline
from hawq_search.plan import Plan
from hawq_search.problem_builder import build_problem
from hawq_search.sensitivity.table import SensitivityTable
from searches import BruteForceSearch, IlpSearch, SearchStatus, resource_range

WBITS = (2, 3, 4, 8)
ABITS = (4, 8)
PROFILES = list_accelerators()


def make_session(out, **kw) -> Pipeline:
    return tiny_session(out, wbits=WBITS, abits=ABITS, **kw)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run directory: every session below reuses its cached sensitivity table."""
    return tmp_path_factory.mktemp("accel")


@pytest.fixture(scope="module")
def table(run_dir):
    return make_session(run_dir).sensitivity()


# ---- independent counters -------------------------------------------------------------------


def exact_costs(cost_model: CostModel, session: Pipeline, plan: Plan) -> tuple[float, float]:
    """Latency and energy of ``plan`` summed over layers, one sub-kernel per executed precision
    (channels with equal ``kernel_key``, priced at their widest bits), from the graph's layer
    descriptions (not the plan's totals or its recorded layer info)."""
    layers = {layer.name: layer for layer in session.graph.layers}
    lat = en = 0.0
    for lp in plan.layers:
        layer = layers[lp.name]
        kernels: dict = {}
        for b in lp.w_bits:
            kernels.setdefault(cost_model.kernel_key(layer, b, lp.a_bits), []).append(b)
        for bits in kernels.values():
            c = cost_model.layer_cost(layer, max(bits), lp.a_bits, out_channels=len(bits))
            lat, en = lat + c.latency_s, en + c.energy_j
    return lat, en


def plan_cost_sum(cost_model: CostModel, layers, w_bits: dict, a_bits: dict) -> tuple[float, float]:
    costs = [cost_model.plan_cost(lay, w_bits[lay.name], a_bits[lay.name]) for lay in layers]
    return sum(c.latency_s for c in costs), sum(c.energy_j for c in costs)


def count_bytes(model: nn.Module, plan: Plan) -> int:
    """README: per layer ceil(packed bits / 8) + 4 B scale per quantized channel + 4 B bias."""
    modules = dict(model.named_modules())
    total = 0
    for lp in plan.layers:
        ppc = modules[lp.name].weight[0].numel()
        quant = [b for b in lp.w_bits if b <= 8]
        total += math.ceil(sum(ppc * b for b in quant) / 8) + 4 * len(quant)
        total += sum(ppc * (2 if b == 16 else 4) for b in lp.w_bits if b > 8) + 4 * len(lp.w_bits)
    return total


def smallest_exact(cost_model: CostModel, layers) -> tuple[float, float]:
    """Costs are non-decreasing in bits: the uniform lowest-bits plan is the cheapest."""
    w = {lay.name: [min(WBITS)] * lay.out_channels for lay in layers}
    a = {lay.name: min(ABITS) for lay in layers}
    return plan_cost_sum(cost_model, layers, w, a)


# ---- (1) random budgets on every built-in profile ---------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_random_budgets_met_by_exact_cost(name, run_dir, table):
    base = make_session(run_dir, accelerator=name)
    cm = load_accelerator(name)
    problem = build_problem(base.graph, table, cost_model=cm)
    ranges = {r: resource_range(problem, r) for r in ("latency", "energy", "size")}
    slack = problem.resource("size").slack
    rng = np.random.default_rng(sum(map(ord, name)))
    solved = 0
    for k in range(4):
        pick = [("latency",), ("energy",), ("latency", "size"), ("latency", "energy", "size")][
            k % 4
        ]
        budgets = {}
        for r in pick:
            lo, hi = ranges[r]
            if r == "size":
                lo, hi = lo + slack, hi + slack
            budgets[r] = float(rng.uniform(lo, hi)) if hi > lo else hi
        s = make_session(
            run_dir, accelerator=name,
            latency_ms=budgets["latency"] * 1e3 if "latency" in budgets else None,
            energy_mj=budgets["energy"] * 1e3 if "energy" in budgets else None,
            budget_mb=budgets["size"] / 1e6 if "size" in budgets else None,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # budgets at the top of the range do not bind
            try:
                plan, result = s.search(table)
            except InfeasibleBudgetError as e:
                # Each budget is >= its smallest reachable value and costs are non-decreasing
                # in bits, so the uniform lowest-bits plan meets them all: never infeasible.
                pytest.fail(f"{name} {budgets}: feasible budgets rejected: {e}")
        assert result.success
        lat, en = exact_costs(cm, s, plan)
        assert plan.totals["latency_s"] == pytest.approx(lat, rel=1e-9)
        assert plan.totals["energy_j"] == pytest.approx(en, rel=1e-9)
        if "latency" in budgets:
            assert lat <= budgets["latency"] * (1 + 1e-9), (name, budgets, lat)
        if "energy" in budgets:
            assert en <= budgets["energy"] * (1 + 1e-9), (name, budgets, en)
        if "size" in budgets:
            assert count_bytes(s.model, plan) == plan.totals["bytes"] <= budgets["size"]
        assert 1 <= plan.provenance["repricing_rounds"] <= 8
        solved += 1
    assert solved == 4


@pytest.mark.parametrize("granularity", ["channel", "layer"])
@pytest.mark.parametrize("name", PROFILES)
def test_evaluate_agrees_with_plan_cost_for_whole_layer_plans(name, granularity, run_dir, table):
    session = make_session(run_dir)
    cm = load_accelerator(name)
    problem = build_problem(session.graph, table, granularity=granularity, cost_model=cm)
    layers = session.graph.layers
    rng = np.random.default_rng(7)
    for _ in range(8):
        wi = {lay.name: int(rng.integers(len(WBITS))) for lay in layers}
        ai = {g: int(rng.integers(len(ABITS))) for g in problem.act_groups}
        w_choice = np.array([wi[g.layer] for g in problem.weight_groups])
        a_choice = np.array([ai[g] for g in problem.act_groups])
        _, totals = problem.objective_and_totals(w_choice, a_choice)
        w_bits = {lay.name: [WBITS[wi[lay.name]]] * lay.out_channels for lay in layers}
        a_bits = {lay.name: ABITS[ai[lay.act_group]] for lay in layers}
        lat, en = plan_cost_sum(cm, layers, w_bits, a_bits)
        assert totals["latency"] == pytest.approx(lat, rel=1e-9)
        assert totals["energy"] == pytest.approx(en, rel=1e-9)
        exact_bytes = sum(
            cm.plan_cost(lay, w_bits[lay.name], a_bits[lay.name]).weight_bytes for lay in layers
        )
        slack = problem.resource("size").slack
        assert totals["size"] <= exact_bytes <= totals["size"] + slack


# ---- (2) ILP == brute force with tiles and overheads -----------------------------------------


class TileModel(CostModel):
    """Known costs: a sub-kernel of n channels costs ``overhead + ceil(n / q) * tile(w, a)``."""

    name = "tile-test"
    description = "test model with a tile quantum and a per-sub-kernel overhead"
    batch = 1

    def __init__(self, q: int, overhead_s: float, overhead_j: float) -> None:
        self.q, self.overhead_s, self.overhead_j = q, overhead_s, overhead_j

    def channel_quantum(self, layer) -> int:
        return self.q

    def group_overhead(self, layer) -> Cost:
        return Cost(self.overhead_s, self.overhead_j, 0.0, 0.0, 0.0, "compute")

    def layer_cost(self, layer, w_bits, a_bits, *, out_channels=None) -> Cost:
        n = out_channels or layer.out_channels
        tiles = -(-n // self.q)
        per_tile_macs = layer.macs_per_channel * self.q
        return Cost(
            latency_s=self.overhead_s + tiles * per_tile_macs * w_bits * a_bits * 1e-6,
            energy_j=self.overhead_j + tiles * per_tile_macs * (w_bits + 2 * a_bits) * 1e-4,
            weight_bytes=weight_bytes_of(layer, w_bits, n),
            bops=float(layer.macs_per_channel * n * w_bits * a_bits),
            act_bytes=0.0,
            bound="compute",
        )


class Micro(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 3, 3, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def micro_problem(seed: int, cm: CostModel, granularity: str, lat=None, en=None):
    graph = trace_model(Micro().eval(), torch.zeros(1, 2, 4, 4))
    rng = np.random.default_rng(seed)
    wbits, abits = (2, 4), (4, 8)
    weight = {
        lay.name: np.sort(rng.lognormal(0, 1, (lay.out_channels, len(wbits))), axis=1)[:, ::-1].copy()
        for lay in graph.layers
    }  # fmt: skip
    act = {g: np.sort(rng.lognormal(0, 1, len(abits)))[::-1].copy() for g in graph.act_groups}
    table = SensitivityTable("synthetic", wbits, abits, weight, act)
    problem = build_problem(
        graph, table, granularity=granularity, cost_model=cm, latency_budget_s=lat,
        energy_budget_j=en,
    )  # fmt: skip
    return graph, problem


def brute_force_exact(graph, problem, cm, lat, en):
    """Every per-channel plan, priced with ``cm.plan_cost``: (best objective, its costs)."""
    layers = graph.layers
    best = None
    for w in itertools.product(range(len(problem.w_bits)), repeat=len(problem.weight_groups)):
        w_bits = {lay.name: [0] * lay.out_channels for lay in layers}
        loss = 0.0
        for g, i in zip(problem.weight_groups, w, strict=True):
            w_bits[g.layer][g.channels[0] : g.channels[1]] = [problem.w_bits[i]] * g.count
            loss += g.loss[i]
        for a in itertools.product(range(len(problem.a_bits)), repeat=len(problem.act_groups)):
            a_of = {g: problem.a_bits[j] for g, j in zip(problem.act_groups, a, strict=True)}
            obj = loss + sum(problem.act_loss[k, j] for k, j in enumerate(a))
            if best is not None and obj >= best[0]:
                continue
            costs = [cm.plan_cost(lay, w_bits[lay.name], a_of[lay.act_group]) for lay in layers]
            t, e = sum(c.latency_s for c in costs), sum(c.energy_j for c in costs)
            if (lat is None or t <= lat * (1 + 1e-12)) and (en is None or e <= en * (1 + 1e-12)):
                best = (obj, t, e)
    return best


@pytest.mark.parametrize("q", [2, 3])
def test_ilp_equals_brute_force_with_tiles_and_overheads(q):
    # Costs around 1e-2..1 (s, J): BruteForceSearch compares budgets with an absolute 1e-9.
    cm = TileModel(q=q, overhead_s=3e-4, overhead_j=2e-3)
    graph, problem = micro_problem(0, cm, "group:1")
    lat_lo, lat_hi = resource_range(problem, "latency")
    en_lo, en_hi = resource_range(problem, "energy")
    rng = np.random.default_rng(q)
    for k in range(10):
        lat = float(rng.uniform(lat_lo, lat_hi)) if k % 3 != 1 else None
        en = float(rng.uniform(en_lo, en_hi)) if k % 3 != 0 else None
        graph, problem = micro_problem(k, cm, "group:1", lat, en)
        result = IlpSearch(mip_rel_gap=1e-9).solve(problem)
        ref = brute_force_exact(graph, problem, cm, lat, en)
        if ref is None:
            assert result.status is SearchStatus.INFEASIBLE
            continue
        assert result.status is SearchStatus.OPTIMAL, result.message
        assert result.objective == pytest.approx(ref[0], rel=1e-9)
        # The ILP's tile-counted costs are the exact plan costs here.
        assert BruteForceSearch().solve(problem).objective == pytest.approx(ref[0], rel=1e-9)
        if lat is not None:
            assert result.costs["latency"] <= lat * (1 + 1e-9)
        if en is not None:
            assert result.costs["energy"] <= en * (1 + 1e-9)
        # Per-tile groups ("channel" with a quantum) are a restriction: never better.
        _, tiles = micro_problem(k, cm, "channel", lat, en)
        assert len(tiles.weight_groups) == sum(-(-lay.out_channels // q) for lay in graph.layers)
        tr = IlpSearch(mip_rel_gap=1e-9).solve(tiles)
        bf = BruteForceSearch().solve(tiles)
        assert tr.status == bf.status
        if bf.success:
            assert tr.objective == pytest.approx(bf.objective, rel=1e-9)
            assert tr.objective >= ref[0] * (1 - 1e-9)


def test_tile_model_prices_partial_tiles_and_overheads():
    cm = TileModel(q=3, overhead_s=1e-3, overhead_j=0.0)
    graph = trace_model(Micro().eval(), torch.zeros(1, 2, 4, 4))
    a = graph.layers[0]  # 4 channels: one group = 2 tiles; split 3 + 1 = 2 tiles + 2 overheads
    whole = cm.plan_cost(a, [2] * 4, 4).latency_s
    split = cm.plan_cost(a, [2, 2, 2, 4], 4).latency_s
    tile = a.macs_per_channel * 3 * 2 * 4 * 1e-6
    assert whole == pytest.approx(1e-3 + 2 * tile)
    assert split == pytest.approx(2e-3 + 2 * tile + tile)  # the 4-bit tile costs twice a 2-bit one


# ---- (3) infeasible budgets ---------------------------------------------------------------------


def test_infeasible_latency_alone_states_smallest(run_dir, table):
    s = make_session(run_dir, accelerator="nvidia_t4")
    lo, _ = smallest_exact(s.cost_model, s.graph.layers)
    s.config.latency_ms = lo * 1e3 * 0.5
    with pytest.raises(InfeasibleBudgetError) as exc:
        s.search(table)
    msg = str(exc.value)
    assert "\n" not in msg
    m = re.fullmatch(
        r"latency_ms (\S+) ms is infeasible: the smallest plan with wbits 2,3,4,8 and "
        r"abits 4,8 needs (\S+) ms",
        msg,
    )
    assert m, msg
    assert float(m.group(1)) == pytest.approx(lo * 1e3 * 0.5, rel=1e-5)
    assert float(m.group(2)) == pytest.approx(lo * 1e3, rel=1e-5)


@pytest.mark.parametrize("name", PROFILES)
def test_latency_at_smallest_exact_plan_is_feasible(name, run_dir, table):
    """The uniform lowest-bits plan meets a latency budget equal to its own latency."""
    s = make_session(run_dir, accelerator=name)
    lo, _ = smallest_exact(s.cost_model, s.graph.layers)
    s.config.latency_ms = lo * 1e3 * (1 + 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, _ = s.search(table)
    assert exact_costs(s.cost_model, s, plan)[0] <= lo * (1 + 1e-6)


def test_size_and_latency_at_their_minimum_together(run_dir, table):
    """Each budget at the smallest reachable value: the uniform W2A4 plan meets both, so the
    byte-exact size constraint and executed-precision costing must find it."""
    s = make_session(run_dir, accelerator="nvidia_t4")
    lo, _ = smallest_exact(s.cost_model, s.graph.layers)
    smallest_bytes = s.make_plan(
        {lay.name: [2] * lay.out_channels for lay in s.graph.layers},
        {g: 4 for g in s.graph.act_groups},
    ).totals["bytes"]
    s.config.latency_ms = lo * 1e3 * (1 + 1e-6)
    s.config.budget_mb = smallest_bytes / 1e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, _ = s.search(table)
    assert plan.totals["bytes"] <= smallest_bytes


@pytest.mark.filterwarnings("ignore:.*does not bind")
def test_joint_infeasibility_names_every_budget(run_dir, table, monkeypatch):
    """Each budget reachable alone, the ILP infeasible together: one line naming both budgets."""
    s = make_session(run_dir, accelerator="bitserial_bismo_haq_cloud")
    lo, _ = smallest_exact(s.cost_model, s.graph.layers)
    s.config.latency_ms = lo * 1e3 * 1.5
    s.config.energy_mj = 1e3  # does not bind alone
    s.check_budgets()

    class NoPlan(IlpSearch):
        def solve(self, problem):
            return IlpSearch.solve(self, _conflicting(problem))

    s.searcher = NoPlan()
    with pytest.raises(InfeasibleBudgetError) as exc:
        s.search(table)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "latency_ms" in msg and "energy_mj" in msg and "together" in msg, msg
    assert set(exc.value.params) == {"latency_ms", "energy_mj"}


def _conflicting(problem):
    """The problem with an energy budget below every plan's energy (a conflict the monotone
    cost models cannot produce on their own)."""
    for r in problem.resources:
        if r.name == "energy":
            r.budget = 0.0
    return problem


def test_latency_without_accelerator_is_usage_error(cli_env, tmp_path):
    out = tmp_path / "out"
    code, _, err = invoke(["run", *base_args(cli_env, out, "--latency-ms", 1.0)])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "--accelerator" in lines[0] and "--latency-ms" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UserInputError, match="need an accelerator") as exc:
        RunConfig(energy_mj=1.0).validate()
    assert "accelerator" in exc.value.params  # the CLI shows it as --accelerator


# ---- (4) the cost commands ---------------------------------------------------------------------

USER_MODULE = "hawq_user_models_accel"
MODEL = f"{USER_MODULE}:tiny"


def base_args(env, out, *extra) -> list:
    return [
        "--model", MODEL, "--checkpoint", env["ckpt"], "--dataset", "imagefolder",
        "--data-dir", env["data"], "--calib-size", 20, "--eval-size", 20, "--wbits", "2,4,8",
        "--abits", "4,8", "--batch-size", 32, "--quiet", "--out", out, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """A user model module (TinyNet), its checkpoint and an ImageFolder of 16x16 PNGs."""
    env = write_user_env(tmp_path_factory.mktemp("cli-accel"), USER_MODULE, 2, 2)
    yield env
    remove_user_env(env, USER_MODULE)


def test_cost_list_names_every_profile():
    code, out, err = invoke(["cost", "list"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == PROFILES
    t4 = next(line for line in lines if line.startswith("nvidia_t4"))
    assert "batch 8" in t4


def test_cost_show_t4_resnet20():
    code, out, err = invoke(["cost", "show", "--accelerator", "nvidia_t4", "--model", "resnet20"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("nvidia_t4 (batch 8), resnet20")
    rows = [line for line in lines if line.startswith(("conv", "layer", "fc"))]
    assert len(rows) == 20  # 19 convolutions + fc
    total = next(line for line in lines if line.startswith("total latency (ms)"))
    values = [float(v) for v in total.split()[3:]]
    assert len(values) == 4 and values == sorted(values)  # w2 <= w4 <= w8 <= w32
    assert "bound" in lines[1] and lines[-1].endswith("layers at w8")


def test_cost_check_valid_profile_and_broken_csv(tmp_path):
    code, out, err = invoke(["cost", "check", PROFILE_DIR / "bitfusion_45nm.yaml"])
    assert code == 0, err
    assert "valid profile 'bitfusion_45nm'" in out
    csv = tmp_path / "costs.csv"
    csv.write_text(
        "# measured\n"
        "op,in_channels,out_channels,in_h,in_w,out_h,out_w,kernel_h,kernel_w,stride,groups,batch,w_bits,a_bits,latency_s\n"
        "conv2d,16,16,32,32,32,32,3,3,1,1,1,8,8,0.0002\n"
        "conv2d,16,16,32,32,32,32,3,3,1,1,1,4,8,fast\n"
    )  # fmt: skip
    code, out, err = invoke(["cost", "check", csv])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == f"error: {csv}:4: column 'latency_s': expected a number, got 'fast'"
    code, out, _ = invoke(["cost", "check", csv.with_name("missing.csv")])
    assert code == 2


def test_cost_profile_then_run_with_it(cli_env, tmp_path):
    prof = tmp_path / "prof"
    code, out, err = invoke(["cost", "profile", "--model", MODEL, "--out", prof, "--repeats", 2])
    assert code == 0, err
    yaml = prof / "local_cpu.yaml"
    assert yaml.is_file() and (prof / "local_cpu.costs.csv").is_file()
    assert str(yaml) in out
    code, out, err = invoke(["cost", "check", yaml])
    assert code == 0, err
    run = tmp_path / "run"
    cm = load_accelerator(yaml)
    fp = sum(cm.layer_cost(lay, 32, 32).latency_s for lay in _user_layers(cli_env))
    args = base_args(cli_env, run, "--accelerator", yaml, "--latency-ms", fp * 1e3 * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = invoke(["run", *args])
    assert code == 0, err
    plan = Plan.load(run / "plan.json")
    assert plan.totals["accelerator"] == "local_cpu"
    assert plan.totals["latency_s"] <= fp * 2
    assert plan.budgets["accelerator"] == str(yaml)


def _user_layers(env):
    mod = __import__(USER_MODULE)
    return trace_model(mod.tiny().eval(), torch.zeros(1, 3, 32, 32)).layers
