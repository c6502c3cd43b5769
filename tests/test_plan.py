"""Plans built from TinyNet: JSON round trip, validation, apply_plan, and ILP plans that meet
random budgets with bytes / BOPs recomputed independently from the documented formulas."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import TinyNet, synthetic_data, tiny_net, tiny_session
from torch import nn

from hawq_search.core.exceptions import PlanMismatchError, PlanVersionError, UserInputError
from hawq_search.core.layers import LayerInfo
from hawq_search.pipeline import Pipeline
from hawq_search.plan import SCHEMA_VERSION, Plan, apply_plan
from hawq_search.planning import plan_from_solution
from hawq_search.problem_builder import build_problem
from hawq_search.quant.modules import ActQuantizer, QuantConv2d, QuantLinear
from searches import IlpSearch, SearchStatus, resource_range


def make_session(out, *, wbits=(2, 4, 8), abits=(8,), seed=0) -> Pipeline:
    return tiny_session(out, wbits=wbits, abits=abits, seed=seed)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return make_session(tmp_path_factory.mktemp("plan"))


@pytest.fixture(scope="module")
def bops_session(tmp_path_factory):
    """Unquantized options too, and several activation options (BOPs budgets bind)."""
    return make_session(
        tmp_path_factory.mktemp("plan-bops"), wbits=(2, 3, 4, 8, 16), abits=(4, 8, 32)
    )


@pytest.fixture(scope="module")
def plan(session):
    session.config.budget_mb = 850 / 1e6
    p, result = session.search()
    assert result.status is SearchStatus.OPTIMAL
    return p


def uniform_plan(session: Pipeline, w: int, a: int) -> Plan:
    return session.make_plan(
        {layer.name: [w] * layer.out_channels for layer in session.graph.layers},
        {g: a for g in session.graph.act_groups},
    )


# ---- independent cost counters (from the docstring of cost_models/size.py) -------------------


def count_bytes(model: nn.Module, plan: Plan) -> int:
    """Per layer ceil(sum_c ppc * bits_c / 8) over quantized channels + 4 B scale per quantized
    channel + 4 B bias per channel; 16/32-bit channels as fp16/fp32 without scale."""
    modules = dict(model.named_modules())
    total = 0
    for lp in plan.layers:
        ppc = modules[lp.name].weight[0].numel()
        quant = [b for b in lp.w_bits if b <= 8]
        total += math.ceil(sum(ppc * b for b in quant) / 8) + 4 * len(quant)
        total += sum(ppc * (2 if b == 16 else 4) for b in lp.w_bits if b > 8)
        total += 4 * len(lp.w_bits)
    return total


def macs_per_channel(model: nn.Module, input_size) -> dict[str, int]:
    """MACs of one output channel for one sample, measured with forward hooks."""
    out: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):

            def hook(mod, _inp, y, _name=name):
                positions = y[0].numel() // y.shape[1]
                out[_name] = mod.weight[0].numel() * positions

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for h in hooks:
        h.remove()
    return out


def count_bops(model: nn.Module, plan: Plan, input_size) -> int:
    mpc = macs_per_channel(model, input_size)
    return sum(mpc[lp.name] * sum(lp.w_bits) * lp.a_bits for lp in plan.layers)


def test_byte_counter_on_a_hand_example():
    conv = nn.Sequential(nn.Conv2d(1, 3, 3))  # 9 weights per channel
    info = LayerInfo("0", "conv2d", 1, 3, (3, 3), (1, 1), (0, 0), 1, (1, 5, 5), (3, 3, 3),
                     (3, 1, 3, 3), True, 27, 243, "g")  # fmt: skip
    lp_plan = Plan({}, [])
    from hawq_search.plan import LayerPlan

    lp_plan.layers = [LayerPlan("0", "conv2d", (3, 1, 3, 3), [3, 3, 16], 8, "g", 1.0, False,
                                info=info)]  # fmt: skip
    # ceil(2 * 9 * 3 / 8) = 7, scales 2 * 4, fp16 channel 9 * 2 = 18, biases 3 * 4.
    assert count_bytes(conv, lp_plan) == 7 + 8 + 18 + 12
    assert lp_plan.recompute_totals()["bytes"] == 7 + 8 + 18 + 12


# ---- JSON ---------------------------------------------------------------------------------


def test_json_round_trip(plan, tmp_path):
    path = tmp_path / "plan.json"
    plan.save(path)
    assert not (tmp_path / "plan.json.tmp").exists()
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.to_dict() == plan.to_dict()
    assert loaded.totals == plan.totals and loaded.totals["bytes"] > 0
    for a, b in zip(loaded.layers, plan.layers, strict=True):
        assert isinstance(a.info, LayerInfo)
        assert a.info == b.info
        assert a.w_bits == b.w_bits and a.act_clip == b.act_clip
    assert loaded.recompute_totals() == plan.totals
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("version", [None, 0, 3, "1"])
def test_schema_version_mismatch(plan, tmp_path, version):
    d = plan.to_dict()
    if version is None:
        del d["schema_version"]
    else:
        d["schema_version"] = version
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PlanVersionError, match="schema_version"):
        Plan.load(path)


def _edit(d, how):
    if how == "no-layers":
        del d["layers"]
    elif how == "no-model":
        del d["model"]
    elif how == "layer-missing-key":
        del d["layers"][0]["w_bits"]
    elif how == "bad-bits":
        d["layers"][1]["w_bits"][0] = 9
    elif how == "bad-abits":
        d["layers"][0]["a_bits"] = 1
    elif how == "bits-not-int":
        d["layers"][0]["w_bits"] = ["four"] * len(d["layers"][0]["w_bits"])
    elif how == "bad-layerinfo":
        d["layers"][0]["layer"] = {"name": "conv1"}
    elif how == "layers-null":
        d["layers"] = None
    return d


@pytest.mark.parametrize(
    "how",
    ["no-layers", "no-model", "layer-missing-key", "bad-bits", "bad-abits", "bits-not-int",
     "bad-layerinfo", "layers-null"],
)  # fmt: skip
def test_malformed_plan_is_user_input_error(plan, tmp_path, how):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_edit(plan.to_dict(), how)))
    with pytest.raises(UserInputError, match="plan"):
        Plan.load(path)


def test_unreadable_plan_files(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "layers": [')
    with pytest.raises(UserInputError, match="not valid JSON"):
        Plan.load(bad)


@pytest.mark.parametrize(
    "text", ["[1, 2]", "3", '{"schema_version": 1, "model": {}, "layers": "x"}']
)
def test_non_object_json_is_user_input_error(tmp_path, text):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(UserInputError):
        Plan.load(path)


# ---- apply_plan ---------------------------------------------------------------------------


def test_apply_plan_replaces_layers_and_keeps_parameter_names(session, plan):
    model = session.model
    names_before = [n for n, _ in model.named_parameters()]
    q = apply_plan(model, plan)
    assert q is not model
    assert [n for n, _ in q.named_parameters()] == names_before
    mods = dict(q.named_modules())
    for lp in plan.layers:
        m = mods[lp.name]
        assert isinstance(m, QuantConv2d if lp.type == "conv2d" else QuantLinear)
        assert m.w_bits.tolist() == lp.w_bits
        assert m.w_scale.shape == (len(lp.w_bits),)
    # Every float parameter and buffer is still there under the same name.
    q_state = q.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(q_state[k], v)
    # The float checkpoint loads into the quantized model by name.
    missing, unexpected = q.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == []
    assert all(k.endswith(("w_bits", "w_scale", "clip")) for k in missing)
    # It trains: gradients reach the latent float weights.
    x = synthetic_data(4).images
    q.train()
    q(x).sum().backward()
    assert q.conv1.weight.grad is not None and q.fc.weight.grad is not None


def test_apply_plan_does_not_modify_original_unless_inplace(session, plan):
    model = tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = synthetic_data(8).images
    y = model(x)
    q = apply_plan(model, plan)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), y)
    assert q.conv1.weight is not model.conv1.weight
    q2 = apply_plan(model, plan, inplace=True)
    assert q2 is model
    assert isinstance(model.conv1, QuantConv2d) and isinstance(model.fc, QuantLinear)
    assert torch.allclose(q2(x), q(x))


def test_all_32_bit_plan_equals_float_model(session):
    model = session.model
    plan32 = uniform_plan(session, 32, 32)
    q = apply_plan(model, plan32)
    x = synthetic_data(16, seed=5).images
    with torch.no_grad():
        assert torch.equal(q(x), model(x))
    assert all(getattr(m, "act_quant", None) is None for m in q.modules())
    assert plan32.totals["avg_weight_bits"] == 32


def test_8_bit_plan_is_close_to_float(session):
    model = session.model
    q = apply_plan(model, uniform_plan(session, 8, 8))
    x = synthetic_data(32, seed=6).images
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert not torch.equal(ref, out)
    assert (out - ref).norm() / ref.norm() < 0.05
    q2 = apply_plan(model, uniform_plan(session, 2, 8))
    with torch.no_grad():
        out2 = q2(x)
    assert (out2 - ref).norm() > (out - ref).norm()


def test_shared_activation_quantizer_per_act_group(session, plan):
    q = apply_plan(session.model, plan)
    assert isinstance(q.dw.act_quant, ActQuantizer)
    assert q.dw.act_quant is q.side.act_quant
    assert q.conv1.act_quant is not q.conv2.act_quant
    assert q.conv2.act_quant is not q.dw.act_quant
    quantizers = {id(m.act_quant) for m in q.modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    assert len(quantizers) == len(session.graph.act_groups) == 4
    lp = {lp.name: lp for lp in plan.layers}
    assert lp["dw"].act_group == lp["side"].act_group
    assert q.dw.act_quant.bits == lp["dw"].a_bits == 8
    assert float(q.dw.act_quant.clip) == pytest.approx(lp["dw"].act_clip)
    # dw/side read a ReLU output: unsigned grid; conv1 reads the (normalised) image: signed.
    assert not q.dw.act_quant.signed and q.conv1.act_quant.signed


class _Renamed(TinyNet):
    def __init__(self) -> None:
        super().__init__(num_classes=5)
        self.extra = nn.Conv2d(8, 8, 1)
        del self.side
        self.side2 = nn.Conv2d(8, 8, 1)


def test_plan_for_different_model_lists_mismatches(plan):
    with pytest.raises(PlanMismatchError) as exc:
        apply_plan(_Renamed(), plan)
    msg = str(exc.value)
    assert "fc: weight (5, 8) vs plan (10, 8)" in msg
    assert "side: no such layer" in msg
    assert "extra: not in the plan" in msg and "side2: not in the plan" in msg
    assert "4 mismatches" in msg
    assert "\n" not in msg


def test_plan_with_wrong_channel_count_and_type(plan):
    d = plan.to_dict()
    d["layers"][0]["w_bits"] = d["layers"][0]["w_bits"][:-1]
    with pytest.raises(UserInputError, match=r"layers\[0\] \(conv1\): 7 w_bits"):
        Plan.from_dict(d)  # a file like that is refused on load
    bad = copy.deepcopy(plan)  # a plan object built wrongly in code reaches apply_plan
    bad.layers[0].w_bits = bad.layers[0].w_bits[:-1]
    with pytest.raises(PlanMismatchError, match="conv1: 7 channel bit-widths for 8 channels"):
        apply_plan(tiny_net(), bad)
    d = plan.to_dict()
    d["layers"][0]["name"] = "bn1"
    with pytest.raises(PlanMismatchError, match="bn1: is BatchNorm2d"):
        apply_plan(tiny_net(), Plan.from_dict(d))


# ---- ILP plans under random budgets --------------------------------------------------------


def _plan_for(session: Pipeline, table, size=None, bops=None):
    problem = build_problem(session.graph, table, size_budget_bytes=size, bops_budget=bops)
    result = IlpSearch().solve(problem)
    assert result.success, result.message
    plan = plan_from_solution(session.plan_context(), problem, result.best, result, {})
    return plan, problem, result


def test_random_size_budgets_are_met(session):
    table = session.sensitivity()
    problem = build_problem(session.graph, table)
    size = problem.resource("size")
    lo, hi = resource_range(problem, "size")
    lo_plan = uniform_plan(session, 2, 8)
    hi_plan = uniform_plan(session, 8, 8)
    assert lo + size.slack >= count_bytes(session.model, lo_plan) - 1e-9
    assert math.ceil(hi) <= count_bytes(session.model, hi_plan) <= hi + size.slack
    rng = np.random.default_rng(0)
    budgets = rng.uniform(lo + size.slack, hi + size.slack, 25)
    prev_loss = None
    for budget in np.sort(budgets):
        plan, _, result = _plan_for(session, table, size=float(budget))
        mine = count_bytes(session.model, plan)
        assert mine <= budget
        assert plan.recompute_totals()["bytes"] == mine == plan.totals["bytes"]
        assert sum(lp.bytes for lp in plan.layers) == mine
        assert plan.totals["predicted_loss_increase"] == pytest.approx(result.objective, rel=1e-9)
        # More budget never predicts a worse plan (up to the solver's relative gap).
        if prev_loss is not None:
            assert result.objective <= prev_loss * (1 + 2e-4) + 1e-15
        prev_loss = result.objective


def test_random_bops_and_size_budgets_are_met(bops_session):
    s = bops_session
    table = s.sensitivity()
    assert table.a_bits == (4, 8, 32)
    problem = build_problem(s.graph, table)
    blo, bhi = resource_range(problem, "bops")
    slo, shi = resource_range(problem, "size")
    slack = problem.resource("size").slack
    rng = np.random.default_rng(1)
    a_seen = set()
    for k in range(12):
        bops = float(rng.uniform(blo, bhi))
        size = float(rng.uniform(slo + slack, shi + slack)) if k % 2 else None
        try:
            plan, _, _ = _plan_for(s, table, size=size, bops=bops)
        except AssertionError:
            # Both budgets random: they may not be reachable together; check that claim.
            assert size is not None
            result = IlpSearch().solve(
                build_problem(s.graph, table, size_budget_bytes=size, bops_budget=bops)
            )
            assert result.status is SearchStatus.INFEASIBLE
            continue
        mine = count_bops(s.model, plan, s.loaded.preprocess.input_size)
        assert mine <= bops
        assert plan.recompute_totals()["bops"] == mine
        assert plan.totals["bytes"] == count_bytes(s.model, plan)
        if size is not None:
            assert plan.totals["bytes"] <= size
        # All layers of one activation group share its bit-width.
        groups: dict[str, set[int]] = {}
        for lp in plan.layers:
            groups.setdefault(lp.act_group, set()).add(lp.a_bits)
            a_seen.add(lp.a_bits)
        assert all(len(v) == 1 for v in groups.values())
    assert len(a_seen) >= 2  # the BOPs budgets made activation bits vary


def test_uniform_plan_fits_and_is_most_precise(session):
    plan = session.uniform_plan(size_bytes=800.0, bops=None)
    assert plan.provenance["uniform_bits"] == {"w": 4, "a": 8}
    assert count_bytes(session.model, plan) <= 800
    with pytest.raises(UserInputError, match="no uniform plan"):
        session.uniform_plan(size_bytes=100.0, bops=None)
