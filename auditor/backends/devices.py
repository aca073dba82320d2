"""Where and in what precision the torch backend runs: `--device auto|cpu|cuda|cuda:N`, `--dtype
auto|float32|bfloat16|float16`, `--device-map auto` (accelerate dispatch for models larger than one device).

auto device = CUDA when this torch has it and a GPU is visible. auto dtype = bfloat16 on a GPU and on CPUs
with native bf16 matmul (AMX or AVX512-BF16: 6-8x the fp32 GEMM rate there), else float32 (machines of this
kind differ: an AVX2-only CPU emulates bf16, slower than fp32). The scan's statistics are accumulated in
fp32 whatever the model runs in. Everything is checked before a model loads.
"""

from __future__ import annotations

import re

import torch

from ..errors import AuditError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def resolve_device(device: str = "auto") -> str:
    """'cpu' or 'cuda:N'; a one-line error for a device this machine does not have."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not m:
        raise AuditError(f"unknown device '{device}' (choose auto, cpu, cuda or cuda:N)")
    if torch.version.cuda is None:
        raise AuditError(f"--device {device}: this torch is a CPU build (install a CUDA build of torch to use a GPU)")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise AuditError(f"--device {device}: {torch.cuda.device_count()} CUDA device(s) visible")
    return f"cuda:{index}"


def resolve_dtype(dtype: str, device: str, flags: set[str] | None = None, capability: str | None = None) -> torch.dtype:
    """`capability`: torch's CPU kernels (default: what torch dispatches to). Capped below AVX-512
    (ATEN_CPU_CAPABILITY=avx2, as reproducible builds set it) on an AMX CPU, torch's half-precision attention
    fails ("pack_vnni2 is only supported when avx512 is supported"): auto is float32 there, and asking for
    bf16/fp16 is a one-line error instead of a traceback mid-run."""
    if dtype != "auto" and dtype not in DTYPES:
        raise AuditError(f"unknown dtype '{dtype}' (choose {', '.join(DTYPE_CHOICES)})")
    if device.startswith("cuda"):
        return DTYPES.get(dtype, torch.bfloat16)
    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    capped = bool({"amx_tile", "amx_bf16"} & flags) and not capability.upper().startswith("AVX512")
    if dtype != "auto":
        if capped and dtype != "float32":
            raise AuditError(f"--dtype {dtype}: torch's CPU kernels are capped at {capability} (ATEN_CPU_CAPABILITY) on "
                             "this AMX CPU, where torch's half-precision attention fails; use --dtype float32, or unset it")
        return DTYPES[dtype]
    return torch.bfloat16 if {"amx_bf16", "avx512_bf16"} & flags and not capped else torch.float32


def check_placement(device: str, dtype: str, device_map: str | None) -> None:
    """Every placement option checked before anything loads."""
    resolve_dtype(dtype, resolve_device(device))
    if device_map not in (None, "auto"):
        raise AuditError(f"unknown --device-map '{device_map}' (auto, or leave it out)")
