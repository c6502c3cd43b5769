"""Shared fixtures: tiny models and synthetic data for the default suite, and the optional
real CIFAR-10 data and weights from ../shared (tests using them skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hawq_search.data.datasets import TensorData

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HAWQ_SEARCH_SHARED", REPO.parent / "shared"))
LOSSLESS = SHARED / "data" / "cifar10-lossless"
WEIGHTS = SHARED / "weights"

torch.set_num_threads(2)


class TinyNet(nn.Module):
    """Conv-BN-ReLU stack with a grouped conv, a depthwise conv, a branch sharing an input and a
    linear head: every structure the graph and quantizers must handle, in a few thousand weights."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.side = nn.Conv2d(8, 8, 1, bias=True)  # reads the same tensor as dw
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.dw(x)) + self.side(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_net(num_classes: int = 10) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(num_classes).eval()


def synthetic_data(n: int = 64, seed: int = 0, size: int = 16) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorData(x, y, list(range(n)), "synthetic")


@pytest.fixture
def tiny():
    return tiny_net()


@pytest.fixture
def data():
    return synthetic_data()


def _has_real() -> bool:
    return (LOSSLESS / "train").is_dir() and (WEIGHTS / "resnet20-12fca82f.th").is_file()


requires_shared = pytest.mark.skipif(
    not _has_real(), reason=f"real CIFAR-10 data and weights not found under {SHARED}"
)


def write_user_env(root: Path, module: str, n_train: int, n_test: int) -> dict:
    """A user model module (TinyNet with a ``tiny`` factory) named ``module``, its checkpoint
    and a 10-class ImageFolder of 16x16 PNGs under ``root``; ``root`` goes on sys.path (undo
    with :func:`remove_user_env`)."""
    import inspect
    import sys
    import textwrap

    from PIL import Image

    source = "import torch\nfrom torch import nn\n\n\n" + textwrap.dedent(
        inspect.getsource(TinyNet)
    )
    source += (
        "\n\ndef tiny(num_classes=10):\n    torch.manual_seed(0)\n    return TinyNet(num_classes)\n"
    )
    (root / f"{module}.py").write_text(source)
    torch.manual_seed(1)
    ckpt = root / "tiny.pt"
    torch.save(TinyNet().state_dict(), ckpt)
    data = root / "data"
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(10):
            d = data / split / f"class{k}"
            d.mkdir(parents=True)
            for i in range(n):
                px = torch.full((16, 16, 3), 20.0 * k) + torch.rand(16, 16, 3, generator=gen) * 55
                Image.fromarray(px.clamp(0, 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    sys.path.insert(0, str(root))
    return {"root": root, "ckpt": ckpt, "data": data}


def remove_user_env(env: dict, module: str) -> None:
    import sys

    sys.path.remove(str(env["root"]))
    sys.modules.pop(module, None)


def tiny_session(out, **config):
    """A Pipeline over TinyNet and synthetic data, its inputs handed in ready-made, so no data
    set or weights file is read. ``config`` overrides RunConfig fields."""
    from hawq_search.config import RunConfig
    from hawq_search.models.registry import LoadedModel
    from hawq_search.models.weights import Preprocess
    from hawq_search.pipeline import Pipeline

    fields = dict(model="tests:tiny", calib_size=64, batch_size=32, progress=False)
    fields.update(config)
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 16, 16))
    return Pipeline(
        RunConfig(out=str(out), **fields),
        model=LoadedModel(tiny_net(), "tests:tiny", pre, 10, None, None),
        calib=synthetic_data(64, seed=0),
        eval_data=synthetic_data(32, seed=1),
    )


def invoke_cli(args: list) -> tuple[int, str, str]:
    """Run the ``hawq-search`` command line in process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from hawq_search.cli.errors import run_cli
    from hawq_search.cli.main import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(cli, [str(a) for a in args])
    return code, out.getvalue(), err.getvalue()
