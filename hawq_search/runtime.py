"""Where and how fast to compute: the device, the autocast precision and the thread count,
decided in one place from what the machine really runs -- never assumed.

bfloat16 autocast roughly halves the time of the sensitivity pass on CPUs that run bfloat16
natively (AVX512_BF16, AMX) and is 5-10x *slower* where it is emulated (AVX2-only CPUs), so
``precision="auto"`` takes bf16 on a CPU only when its flags show native support, on CUDA when
``torch.cuda.is_bf16_supported()``, and fp32 everywhere else.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from functools import lru_cache

import torch

from hawq_search.core.exceptions import UserInputError

__all__ = [
    "PRECISIONS",
    "Runtime",
    "autocast",
    "cpu_description",
    "cpu_has_native_bf16",
    "module_device",
    "resolve_runtime",
]

from hawq_search.config import PRECISIONS  # noqa: E402 - one list, torch-free for the CLI

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The resolved device and precision, and why; recorded in tables and summaries."""

    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    reason: str
    threads: int

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def to_dict(self) -> dict:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "precision_reason": self.reason,
            "threads": self.threads,
            "cpu": cpu_description(),
        }


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether bfloat16 arithmetic runs natively: the CPU has the instructions (x86 AVX512_BF16
    / AMX-BF16, Arm BF16) *and* the kernels may use them. On x86, torch's own kernels need the
    AVX512 capability (``ATEN_CPU_CAPABILITY=avx2`` turns it off) and oneDNN's convolutions need
    an ISA cap of at least AVX512_CORE_BF16 (``ONEDNN_MAX_CPU_ISA``); below either, bf16 is
    emulated and slower than fp32. An unknown CPU counts as not native."""
    flags = _cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return _x86_kernels_use_avx512() and _onednn_isa_allows_bf16()
    return "bf16" in flags  # Arm (Features line)


def _x86_kernels_use_avx512() -> bool:
    return str(torch.backends.cpu.get_cpu_capability()).upper().startswith(("AVX512", "AMX"))


# oneDNN ISA names in increasing order (ONEDNN_MAX_CPU_ISA); bf16 arithmetic from avx512_core_bf16.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
                     "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16",
                     "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")  # fmt: skip


def _onednn_isa_allows_bf16() -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap is None or cap.strip().upper() in _ONEDNN_BF16_ISAS


@lru_cache(maxsize=1)
def cpu_description() -> str:
    """CPU model, torch's CPU capability and the bf16 verdict, for results files."""
    model = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break  # the first processor is enough
    except OSError:
        pass
    model = fields.get("model name", model)
    if "cpu family" in fields and "model" in fields:
        # Virtual machines often show only "AMD EPYC": family/model tell Zen 3 (25/1) from Zen 4.
        model += f" family {fields['cpu family']} model {fields['model']}"
    capability = torch.backends.cpu.get_cpu_capability()
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{model} ({os.cpu_count()} cores, torch capability {capability}, {native})"


def _device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserInputError(
            f"device {spec!r} is not auto, cpu, cuda, cuda:N or mps", params=("device",)
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device cuda: no CUDA device is available here", params=("device",))
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {spec}: only {torch.cuda.device_count()} CUDA devices", params=("device",)
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("device mps: MPS is not available here", params=("device",))
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"device {spec!r} is not supported", params=("device",))
    return device


def _precision(spec: str, device: torch.device) -> tuple[str, str]:
    if spec not in PRECISIONS:
        raise UserInputError(
            f"precision {spec!r} is not one of {', '.join(PRECISIONS)}", params=("precision",)
        )
    if spec == "fp16" and device.type == "cpu":
        raise UserInputError(
            "precision fp16 needs a GPU (cuda or mps): use fp32 or bf16 on a CPU",
            params=("precision",),
        )
    if spec != "auto":
        return spec, "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device supports bf16"
        return "fp32", "CUDA device without bf16"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "CPU runs bf16 natively (AVX512_BF16/AMX)"
        return "fp32", (
            "CPU emulates bf16 (no AVX512_BF16/AMX, or kernels restricted below it): fp32 is faster"
        )
    return "fp32", f"{device.type}: fp32 by default"


def resolve_runtime(device: str = "auto", precision: str = "auto", threads: int | None = None):
    """Resolve ``device`` (auto|cpu|cuda[:N]|mps), ``precision`` (auto|fp32|bf16|fp16) and
    ``threads`` (None = torch's default, which honours OMP_NUM_THREADS) into a :class:`Runtime`,
    applying the thread count."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UserInputError(
                f"threads must be an integer >= 1, got {threads!r}", params=("threads",)
            )
        torch.set_num_threads(threads)
    dev = _device(device)
    prec, reason = _precision(precision, dev)
    return Runtime(dev, prec, reason, torch.get_num_threads())


def autocast(runtime: Runtime):
    """Autocast to the runtime's precision on its device (a no-op context for fp32)."""
    if runtime.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.dtype)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
