"""Tracing (layers, shapes, MACs, activation groups), the model registry, checkpoints and
weights resolution (offline), and user models named package.module:factory."""

from __future__ import annotations

import hashlib
import inspect
import sys
import textwrap

import pytest
import torch
from conftest import TinyNet, tiny_net
from torch import nn

from hawq_search.core.exceptions import UnsupportedModelError, UserInputError, WeightsNotFoundError
from hawq_search.graph.trace import trace_model
from hawq_search.models import create_model, get_model_spec, list_models
from hawq_search.models.cifar_resnet import cifar_resnet
from hawq_search.models.weights import (
    WEIGHTS_ENV,
    Preprocess,
    Weights,
    extract_state_dict,
    load_checkpoint,
    load_into,
    resolve_weights_file,
)

# ---- tracing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_graph():
    return trace_model(tiny_net(), torch.zeros(1, 3, 16, 16))


def test_tinynet_layers_params_macs(tiny_graph):
    g = tiny_graph
    assert [layer.name for layer in g.layers] == ["conv1", "conv2", "dw", "side", "fc"]
    assert [layer.index for layer in g.layers] == list(range(5))
    by = g.by_name
    # params = C_out * C_in / groups * kh * kw; MACs = params * output pixels.
    assert by["conv1"].params == 8 * 3 * 9 and by["conv1"].macs == 216 * 16 * 16
    assert by["conv2"].params == 8 * 4 * 9 and by["conv2"].macs == 288 * 8 * 8
    assert by["dw"].params == 8 * 1 * 9 and by["dw"].macs == 72 * 8 * 8
    assert by["side"].params == 8 * 8 and by["side"].macs == 64 * 8 * 8
    assert by["fc"].params == 80 and by["fc"].macs == 80
    assert g.total_params == 216 + 288 + 72 + 64 + 80
    assert g.total_macs == 55296 + 18432 + 4608 + 4096 + 80
    c2 = by["conv2"]
    assert (c2.stride, c2.padding, c2.groups, c2.kernel_size) == ((2, 2), (1, 1), 2, (3, 3))
    assert c2.input_shape == (8, 16, 16) and c2.output_shape == (8, 8, 8)
    assert c2.weight_shape == (8, 4, 3, 3) and not c2.has_bias and by["side"].has_bias
    assert by["dw"].is_depthwise and not c2.is_depthwise
    assert by["fc"].op == "linear" and by["fc"].input_shape == (8,)
    assert by["dw"].params_per_channel == 9 and by["dw"].macs_per_channel == 9 * 64


def test_tinynet_act_groups_and_predecessors(tiny_graph):
    g = tiny_graph
    groups = {tuple(v) for v in g.act_groups.values()}
    assert groups == {("conv1",), ("conv2",), ("dw", "side"), ("fc",)}
    assert g.by_name["dw"].act_group == g.by_name["side"].act_group
    assert len({layer.act_group for layer in g.layers}) == 4
    assert g.quantizable_predecessors("conv1") == []
    assert g.quantizable_predecessors("conv2") == ["conv1"]
    assert g.quantizable_predecessors("dw") == ["conv2"]
    assert g.quantizable_predecessors("side") == ["conv2"]
    assert g.quantizable_predecessors("fc") == ["dw", "side"]
    assert g.graph.nodes["fc"]["layer"] is g.by_name["fc"]
    assert g.input_shape == (3, 16, 16)


def test_trace_leaves_training_mode():
    m = tiny_net().train()
    trace_model(m, torch.zeros(1, 3, 8, 8))
    assert m.training


@pytest.mark.parametrize(
    "depth, layers, params, macs", [(20, 20, 268_336, 40_551_040), (56, 56, 848_944, 125_485_696)]
)
def test_cifar_resnets(depth, layers, params, macs):
    g = trace_model(cifar_resnet(depth), torch.zeros(1, 3, 32, 32))
    assert len(g.layers) == layers
    assert (
        g.total_params == params and round(g.total_params / 1e6, 2) == {20: 0.27, 56: 0.85}[depth]
    )
    assert g.total_macs == macs and round(g.total_macs / 1e6, 2) == {20: 40.55, 56: 125.49}[depth]
    assert g.layers[0].name == "conv1" and g.layers[-1].name == "linear"
    # Option-A shortcuts have no parameters: every layer reads its own tensor.
    assert len(g.act_groups) == layers


def test_cifar_resnet_depth_check():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_torchvision_resnet18_traces_with_shared_downsample_inputs():
    torchvision = pytest.importorskip("torchvision")
    g = trace_model(torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224))
    assert len(g.layers) == 21  # 1 + 16 block convs + 3 downsample convs + fc
    assert g.total_params == 11_678_912
    assert round(g.total_macs / 1e9, 2) == 1.81
    shared = sorted(tuple(v) for v in g.act_groups.values() if len(v) > 1)
    assert shared == [(f"layer{k}.0.conv1", f"layer{k}.0.downsample.0") for k in (2, 3, 4)]
    # Through the residual adds: every earlier block output reaches layer2.0's input.
    assert g.quantizable_predecessors("layer2.0.conv1") == [
        "conv1", "layer1.0.conv2", "layer1.1.conv2"
    ]  # fmt: skip
    assert g.quantizable_predecessors("layer2.0.conv2") == ["layer2.0.conv1"]


class _Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


@pytest.mark.parametrize(
    "model, match",
    [
        (_Dynamic(), "torch.fx cannot trace _Dynamic"),
        (_Twice(), "called more than once"),
        (nn.Sequential(nn.ReLU(), nn.Flatten()), "no Conv2d or Linear"),
    ],
)
def test_untraceable_models(model, match):
    with pytest.raises(UnsupportedModelError, match=match):
        trace_model(model, torch.zeros(1, 3, 8, 8))


# ---- registry -----------------------------------------------------------------------------


def test_registry_lists_models_and_rejects_unknown():
    names = list_models()
    assert {"resnet20", "resnet56", "resnet18", "resnet50"} <= set(names)
    assert list_models("resnet5*") == ["resnet50", "resnet56"]
    spec = get_model_spec("resnet20")
    assert spec.num_classes == 10 and spec.dataset == "cifar10"
    assert spec.weights.file_name == "resnet20-12fca82f.th"
    assert spec.weights.preprocess.input_size == (3, 32, 32)
    with pytest.raises(UserInputError, match="unknown model 'resnet7'.*resnet20"):
        get_model_spec("resnet7")


def test_registered_model_with_local_checkpoint(tmp_path):
    m = cifar_resnet(20)
    path = tmp_path / "r20.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, path)
    loaded = create_model("resnet20", checkpoint=path)
    assert loaded.weights_source == str(path) and not loaded.model.training
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in m.state_dict().items())
    assert loaded.num_classes == 10 and loaded.dataset == "cifar10"


# ---- checkpoints --------------------------------------------------------------------------


def test_extract_state_dict_variants():
    m = tiny_net()
    sd = m.state_dict()
    for obj in (
        sd,
        {"state_dict": sd, "epoch": 3},
        {"model_state_dict": sd},
        {"model": m},
        {"net": sd},
        m,
        {"module." + k: v for k, v in sd.items()},
        {"state_dict": {"module." + k: v for k, v in sd.items()}, "best_prec1": 91.7},
    ):
        out = extract_state_dict(obj)
        assert list(out) == list(sd)
        assert all(torch.equal(out[k], sd[k]) for k in sd)
    for bad in ({"epoch": 3}, [1, 2], {"weights": "x"}):
        with pytest.raises(WeightsNotFoundError, match="no state_dict"):
            extract_state_dict(bad)


def test_load_checkpoint_files(tmp_path):
    m = tiny_net()
    good = tmp_path / "good.pt"
    torch.save({"state_dict": m.state_dict()}, good)
    assert set(load_checkpoint(good)) == set(m.state_dict())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsNotFoundError, match="not a torch file"):
        load_checkpoint(junk)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_load_into_mismatch_message():
    model = tiny_net()
    sd = TinyNet(num_classes=5).state_dict()
    del sd["conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsNotFoundError) as exc:
        load_into(model, sd, "ckpt.pt")
    msg = str(exc.value)
    assert msg.startswith("ckpt.pt does not fit the network")
    assert "missing: conv1.weight" in msg
    assert "unexpected: extra.weight" in msg
    assert "fc.weight (5, 8) vs (10, 8)" in msg and "fc.bias (5,) vs (10,)" in msg
    # Old checkpoints without num_batches_tracked load fine.
    ok = {k: v for k, v in tiny_net().state_dict().items() if "num_batches" not in k}
    load_into(model, ok, "old.pt")


# ---- weights resolution (offline) ---------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No environment directory, a private torch.hub dir and no network."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls = []

    def no_network(url, dst, *a, **k):
        calls.append(url)
        raise ConnectionError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def _weights_file(directory, content: bytes = b"fake weights") -> tuple[Weights, str]:
    digest = hashlib.sha256(content).hexdigest()
    name = f"tiny-{digest[:8]}.th"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(content)
    pre = Preprocess(mean=(0, 0, 0), std=(1, 1, 1))
    return Weights(
        url=f"https://example.invalid/models/{name}", sha256=None, preprocess=pre
    ), digest


def test_resolve_weights_file_finds_local_file(offline, tmp_path):
    w, digest = _weights_file(tmp_path / "w")
    assert resolve_weights_file(w, tmp_path / "w") == tmp_path / "w" / w.file_name
    full = Weights(url=w.url, sha256=digest, preprocess=w.preprocess)
    assert resolve_weights_file(full, tmp_path / "w") == tmp_path / "w" / w.file_name
    assert offline == []


def test_resolve_weights_file_via_environment(offline, tmp_path, monkeypatch):
    w, _ = _weights_file(tmp_path / "env")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "env"))
    assert resolve_weights_file(w, tmp_path / "elsewhere") == tmp_path / "env" / w.file_name


def test_resolve_weights_file_rejects_wrong_hash(offline, tmp_path):
    w, _ = _weights_file(tmp_path / "w")
    bad = Weights(url=w.url, sha256="0" * 64, preprocess=w.preprocess)
    with pytest.raises(WeightsNotFoundError, match="sha256"):
        resolve_weights_file(bad, tmp_path / "w")
    # A file whose content does not match the hash prefix in its own name.
    (tmp_path / "w" / w.file_name).write_bytes(b"tampered")
    with pytest.raises(WeightsNotFoundError, match=f"expected {w.file_name[5:13]}"):
        resolve_weights_file(w, tmp_path / "w")


def test_missing_weights_offline(offline, tmp_path):
    w, _ = _weights_file(tmp_path / "w")
    empty = tmp_path / "empty"
    with pytest.raises(WeightsNotFoundError) as exc:
        resolve_weights_file(w, empty)
    msg = str(exc.value)
    assert w.file_name in msg and str(empty) in msg and str(tmp_path / "hub") in msg
    assert "weights_dir" in msg and WEIGHTS_ENV in msg and "ConnectionError" in msg
    assert offline == [w.url]


def test_registered_model_missing_weights_offline(offline, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="resnet20-12fca82f.th not found"):
        create_model("resnet20", weights_dir=tmp_path)


# ---- user models --------------------------------------------------------------------------

USER_MODULE = "hawq_user_models_graph"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    source = "import torch\nfrom torch import nn\n\n\n" + textwrap.dedent(
        inspect.getsource(TinyNet)
    )
    source += textwrap.dedent(
        """

        def tiny(num_classes=10):
            torch.manual_seed(0)
            return TinyNet(num_classes)


        not_a_factory = 3


        def not_a_module():
            return 42
        """
    )
    (tmp_path / f"{USER_MODULE}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    yield f"{USER_MODULE}:tiny"
    sys.modules.pop(USER_MODULE, None)


def test_user_model_with_checkpoint(user_module, tmp_path):
    ref = TinyNet()
    torch.nn.init.constant_(ref.fc.bias, 0.25)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, ckpt)
    loaded = create_model(user_module, checkpoint=ckpt)
    assert type(loaded.model).__name__ == "TinyNet"
    assert loaded.model_id == user_module and loaded.num_classes == 10
    assert loaded.weights_source == str(ckpt) and loaded.dataset is None
    assert torch.equal(loaded.model.fc.bias, ref.fc.bias)
    assert not loaded.model.training
    custom = Preprocess(mean=(0.1, 0.2, 0.3), std=(1, 1, 1), input_size=(3, 16, 16))
    assert create_model(user_module, preprocess=custom).preprocess is custom
    assert create_model(user_module, num_classes=4).num_classes == 4


def test_user_model_checkpoint_that_does_not_fit(user_module, tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save(cifar_resnet(20).state_dict(), ckpt)
    with pytest.raises(WeightsNotFoundError, match="does not fit the network"):
        create_model(user_module, checkpoint=ckpt)


@pytest.mark.parametrize(
    "target, match",
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        (f"{USER_MODULE}:missing", "has no 'missing'"),
        (f"{USER_MODULE}:not_a_factory", "not_a_factory is not callable"),
        (f"{USER_MODULE}:not_a_module", "returned int, not a torch.nn.Module"),
        (f"{USER_MODULE}:", "package.module:name"),
    ],
)
def test_user_model_errors(user_module, target, match):
    with pytest.raises(UserInputError, match=match):
        create_model(target)
