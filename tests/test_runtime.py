"""Device, precision and threads are decided in one place, by capability, and recorded."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hawq_search import runtime
from hawq_search.core.exceptions import UserInputError
from hawq_search.runtime import autocast, resolve_runtime


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert resolve_runtime("cpu", "auto").precision == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    rt = resolve_runtime("cpu", "auto")
    assert rt.precision == "fp32" and "emulates" in rt.reason


@pytest.mark.parametrize(
    ("flags", "capability", "isa_cap", "native"),
    [
        ({"avx2"}, "AVX2", None, False),  # Zen 3: no bf16 instructions
        ({"avx512f", "avx512_bf16"}, "AVX512", None, True),  # Zen 4 / Cooper Lake
        ({"avx512f", "amx_bf16"}, "AVX512", "AVX512_CORE_AMX", True),  # Sapphire Rapids
        ({"avx512f", "avx512_bf16"}, "AVX2", None, False),  # ATEN_CPU_CAPABILITY=avx2
        ({"avx512f", "avx512_bf16"}, "AVX512", "AVX2", False),  # oneDNN capped below bf16
        ({"avx512f", "avx512_bf16"}, "AVX512", "avx512_core", False),
        ({"fp", "asimd", "bf16"}, "DEFAULT", None, True),  # Arm with BF16
        (set(), "DEFAULT", None, False),  # unknown CPU
    ],
)
def test_native_bf16_needs_instructions_and_kernels_allowed_to_use_them(
    monkeypatch, flags, capability, isa_cap, native
):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if isa_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    assert runtime.cpu_has_native_bf16() is native


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forced_precision_is_kept_and_recorded(precision):
    rt = resolve_runtime("cpu", precision)
    assert rt.precision == precision and rt.reason == "requested"
    info = rt.to_dict()
    assert info["precision"] == precision and info["device"] == "cpu" and info["cpu"]


def test_autocast_uses_the_resolved_dtype():
    x = torch.randn(4, 4)
    with autocast(resolve_runtime("cpu", "bf16")):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(resolve_runtime("cpu", "fp32")):
        assert (x @ x).dtype == torch.float32


@pytest.mark.parametrize(
    ("device", "precision", "match"),
    [
        ("tpu", "auto", "not auto, cpu"),
        ("cpu", "fp16", "needs a GPU"),
        ("cpu", "fp8", "not one of"),
    ],
)
def test_bad_runtime_is_a_user_error(device, precision, match):
    with pytest.raises(UserInputError, match=match):
        resolve_runtime(device, precision)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserInputError, match="no CUDA device"):
        resolve_runtime("cuda", "auto")


def test_threads_are_applied_and_validated():
    before = torch.get_num_threads()
    try:
        assert resolve_runtime("cpu", "fp32", threads=1).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserInputError, match="threads"):
        resolve_runtime("cpu", "fp32", threads=0)


def test_cli_does_not_cap_threads_and_help_loads_no_torch():
    code = (
        "import sys; from hawq_search.cli.main import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"
    assert "--threads" in res.stdout and "--precision" in res.stdout and "--device" in res.stdout


def test_pipeline_records_the_runtime(tmp_path):
    from conftest import tiny_session

    s = tiny_session(tmp_path, wbits=(2, 8), abits=(8,), precision="fp32", device="cpu")
    table = s.sensitivity()
    assert table.meta["precision"] == "fp32"
    assert table.meta["runtime"]["device"] == "cpu"
    assert table.meta["runtime"]["precision_reason"] == "requested"
