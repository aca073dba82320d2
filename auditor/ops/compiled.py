"""Loads the compiled core (cpp/) as a torch extension, compiled on first use and cached.

Why on first use rather than at install: the CPU torch wheel has no CUDA toolkit integration, so one
install-time build could not serve both CPU and CUDA machines, and a build step inside pip's isolated
environment would pull a (CUDA) torch of its own. `torch.utils.cpp_extension.load` compiles against
the torch that is actually imported, adds the CUDA kernels only when that torch has CUDA, and caches
the result (TORCH_EXTENSIONS_DIR). Without a compiler the product still works on the pure-torch path
after a one-line warning.
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib import resources
from pathlib import Path

import torch

_state: dict = {}


def source_dir() -> Path:
    """cpp/ in a source checkout, else the copy the wheel ships as package data (auditor/_cpp, put there
    by setup.py's build step)."""
    package = Path(__file__).resolve().parent.parent
    for cand in (package.parent / "cpp", package / "_cpp"):
        if (cand / "ops.cpp").is_file():
            return cand
    return Path(str(resources.files("auditor"))) / "_cpp"


def _with_cuda() -> bool:
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def load(verbose: bool = False) -> bool:
    """Compile (once) and load the ops; returns whether torch.ops.safety_audit is available."""
    if "loaded" in _state:
        return _state["loaded"]
    if os.environ.get("SAFETY_AUDIT_NO_EXT"):
        _state.update(loaded=False, cuda=False, error="disabled by SAFETY_AUDIT_NO_EXT")
        return False
    src = source_dir()
    sources = [str(src / f) for f in ("ops.cpp", "pair_stats_cpu.cpp", "scale_cpu.cpp")]
    cuda = _with_cuda()
    if cuda:
        sources += [str(src / "cuda_ops.cpp"), str(src / "cuda" / "pair_stats.cu"), str(src / "cuda" / "scale.cu")]
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name="safety_audit_ops" + ("_cuda" if cuda else ""),
            sources=sources,
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"] if cuda else None,
            extra_include_paths=[str(src / "cuda")],
            is_python_module=False,
            verbose=verbose,
        )
        _state.update(loaded=True, cuda=cuda, error=None)
    except Exception as e:  # no compiler, no ninja, broken toolchain: fall back to pure torch
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        _state.update(loaded=False, cuda=False, error=msg)
        print(f"warning: compiled core unavailable ({msg}); using the pure-torch path", file=sys.stderr)
    return _state["loaded"]


def status() -> dict:
    load()
    return {"loaded": _state["loaded"], "cuda": _state["cuda"], "error": _state["error"], "source": str(source_dir())}


def ops():
    if not load():
        return None
    return torch.ops.safety_audit


warnings.filterwarnings("ignore", message=".*TORCH_CUDA_ARCH_LIST.*")
