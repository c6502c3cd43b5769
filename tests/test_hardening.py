"""What a probe with hostile or broken inputs found, each kept out: pickled code in a
checkpoint, YAML alias bombs and duplicate keys, a corrupt or foreign sensitivity cache, two runs
on one run directory, an unwritable run directory, a plan lost to an interrupted evaluation."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_net, tiny_session

from cost_models.registry import PROFILE_DIR, load_accelerator
from hawq_search.core.exceptions import CostModelError, UserInputError, WeightsNotFoundError
from hawq_search.files import RunDirLock
from hawq_search.models.weights import load_checkpoint


class _Payload:
    """Unpickling this runs ``touch`` on a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_net().state_dict(), "x": _Payload(marker)}, ckpt)
    with pytest.raises(WeightsNotFoundError, match="run arbitrary code") as exc:
        load_checkpoint(ckpt)
    assert "trust_checkpoint" in exc.value.params
    assert not marker.exists()


def test_plain_state_dict_loads_without_trust(tmp_path):
    ckpt = tmp_path / "ok.pt"
    torch.save({"state_dict": tiny_net().state_dict(), "epoch": 3}, ckpt)
    assert set(load_checkpoint(ckpt)) == set(tiny_net().state_dict())


def _profile(tmp_path: Path, text: str, name: str = "p.yaml", raw: bytes | None = None) -> Path:
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text)
    return path


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "match"),
    [(BOMB, "aliases"), ("a: &a [*a]\n", "aliases"), ("kind: cpu\nkind: gpu\n", "duplicate key")],
)
def test_hostile_yaml_is_refused_at_once(tmp_path, text, match):
    t0 = time.perf_counter()
    with pytest.raises(CostModelError, match=match):
        load_accelerator(_profile(tmp_path, text))
    assert time.perf_counter() - t0 < 5  # the bomb is never expanded


def test_profile_encodings(tmp_path):
    good = (PROFILE_DIR / "nvidia_t4.yaml").read_bytes()
    load_accelerator(_profile(tmp_path, "", "bom.yaml", raw=b"\xef\xbb\xbf" + good))
    with pytest.raises(CostModelError, match="not UTF-8"):
        load_accelerator(_profile(tmp_path, "", "latin.yaml", raw=good + b"# caf\xe9\n"))


def _cache_file(s) -> Path:
    (path,) = s.out.glob("sensitivity-fisher-*.npz")
    return path


def _corrupt(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        key = next(k for k in arrays if k.startswith("w/"))
        arrays[key] = arrays[key][:3] if how == "rows" else -np.abs(arrays[key]) - 1
        np.savez(path, **arrays)


@pytest.mark.parametrize("how", ["empty", "truncated", "rows", "negative"])
def test_bad_cache_is_recomputed_with_a_warning(tmp_path, how):
    first = tiny_session(tmp_path, wbits=(2, 8), precision="fp32").sensitivity()
    s = tiny_session(tmp_path, wbits=(2, 8), precision="fp32")
    _corrupt(_cache_file(s), how)
    with pytest.warns(UserWarning, match="unusable"):
        again = s.sensitivity()
    assert not again.meta.get("cached")
    assert all(np.allclose(first.weight[k], again.weight[k]) for k in first.weight)
    reread = tiny_session(tmp_path, wbits=(2, 8), precision="fp32").sensitivity()
    assert reread.meta.get("cached")  # the rewritten cache is good again


def test_cache_key_follows_the_calibration_images(tmp_path):
    from conftest import synthetic_data

    a = tiny_session(tmp_path, wbits=(2, 8), precision="fp32")
    a.sensitivity()
    b = tiny_session(tmp_path, wbits=(2, 8), precision="fp32")
    b._calib = synthetic_data(64, seed=7)  # other images, same count, same indices
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not b.sensitivity().meta.get("cached")
    assert len(list(tmp_path.glob("sensitivity-fisher-*.npz"))) == 2


def test_one_run_directory_one_process(tmp_path):
    import subprocess
    import sys

    held = tmp_path / "run"
    code = (
        "import sys, time; from hawq_search.files import RunDirLock; "
        f"lock = RunDirLock({str(held)!r}); print('locked', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserInputError, match="another hawq-search process"):
            RunDirLock(held)
    finally:
        proc.kill()
        proc.wait()
    RunDirLock(held).release()  # free again once the other process is gone


def test_unwritable_out_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = tiny_session(blocker / "run")
    with pytest.raises(UserInputError, match="not a writable directory"):
        s.run_dir()
    assert s._tables == {}


def test_plan_survives_an_interrupted_evaluation(tmp_path, monkeypatch):
    from hawq_search.run import run_job

    s = tiny_session(tmp_path / "r", wbits=(2, 4, 8), budget_mb=0.0008, precision="fp32")

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(s, "top1", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(s)
    assert (tmp_path / "r" / "plan.json").is_file()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_one_line_naming_the_file(tmp_path, workers, damage):
    from PIL import Image

    from hawq_search.data.datasets import load_subset
    from hawq_search.models.weights import Preprocess

    for k in range(2):
        d = tmp_path / "train" / f"c{k}"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(d / f"{i}.png")
    bad = tmp_path / "train" / "c1" / "1.png"
    bad.write_bytes(b"garbage" if damage == "garbage" else bad.read_bytes()[:40])
    pre = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(3, 8, 8))
    with pytest.raises(UserInputError) as exc:
        load_subset("imagefolder", tmp_path, "train", pre, 0, 0, num_workers=workers)
    msg = str(exc.value)
    assert "\n" not in msg and str(bad) in msg and "not a readable image" in msg


def test_more_classes_than_outputs_and_oversized_subsets(tmp_path):
    from PIL import Image

    from hawq_search.core.exceptions import InputWarning
    from hawq_search.data.datasets import load_subset
    from hawq_search.models.weights import Preprocess

    for k in range(3):
        d = tmp_path / "test" / f"c{k}"
        d.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(d / "0.png")
    pre = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(3, 8, 8))
    with pytest.raises(UserInputError, match="3 classes but the model has 2 outputs"):
        load_subset("imagefolder", tmp_path, "test", pre, 0, 0, max_classes=2)
    with pytest.warns(InputWarning, match="eval_size 10 is more than the 3 images"):
        data = load_subset("imagefolder", tmp_path, "test", pre, 10, 0, size_param="eval_size")
    assert len(data) == 3


def test_input_size_for_user_models(tmp_path):
    import contextlib
    import io

    from conftest import remove_user_env, write_user_env

    from hawq_search.cli.errors import run_cli
    from hawq_search.cli.main import cli
    from hawq_search.plan import Plan

    env = write_user_env(tmp_path, "hawq_user_models_size", 2, 2)
    try:
        base = ["search", "--model", "hawq_user_models_size:tiny", "--checkpoint", env["ckpt"],
                "--dataset", "imagefolder", "--data-dir", env["data"], "--calib-size", 8,
                "--wbits", "2,8", "--quiet"]  # fmt: skip
        for extra, shape in (([], [3, 16, 16]), (["--input-size", "3,24,24"], [3, 24, 24])):
            out = tmp_path / f"run{shape[1]}"
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = run_cli(cli, [str(a) for a in [*base, "--out", out, *extra]])
            assert code == 0, err.getvalue()
            assert Plan.load(out / "plan.json").model["input_shape"] == shape
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = run_cli(cli, [str(a) for a in [*base, "--input-size", "3,0,4"]])
        assert code == 2 and "--input-size" in err.getvalue()
    finally:
        remove_user_env(env, "hawq_user_models_size")
