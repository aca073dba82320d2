"""`doctor`: what this installation has (versions, CPU features, compiled core, threads, bundled model)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

from .. import __version__
from ..errors import AuditError
from ..io.cache import cache_dir
from ..io.models import default_model_path
from ..ops import compiled


def cpu_info() -> dict:
    """The CPU model and the flags that decide which kernels are fast (AMX and AVX-512 on some machines of
    this kind, AVX2 only on others): read at run time, never assumed."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "flags": [f for f in wanted if f in flags]}


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    info = {"schema_version": 2, "command": "doctor", "safety_audit": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu": cpu_info(),
            "llama_cpp_python": _package("llama_cpp_python"), "transformers": _package("transformers"),
            "compiled_ops": compiled.status()}
    try:
        info["bundled_model"] = str(default_model_path())
    except AuditError as e:
        info["bundled_model"] = f"missing ({e})"
    info["cache_dir"] = str(cache_dir())
    return info
