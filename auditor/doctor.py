"""`doctor`: what this installation has (versions, compiled core, threads, bundled model)."""

from __future__ import annotations

import os
import platform

from rich.table import Table

from . import __version__, _ext


def collect() -> dict:
    import torch

    info = {"schema_version": 1, "command": "doctor", "safety_audit": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import llama_cpp

        info["llama_cpp_python"] = llama_cpp.__version__
    except Exception as e:  # noqa: BLE001 - report, do not fail
        info["llama_cpp_python"] = f"unavailable ({e})"
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        info["transformers"] = f"unavailable ({e})"
    info["compiled_ops"] = _ext.status()
    try:
        from .models import default_model_path

        info["bundled_model"] = str(default_model_path())
    except Exception as e:  # noqa: BLE001
        info["bundled_model"] = f"missing ({e})"
    from .models import cache_dir

    info["cache_dir"] = str(cache_dir())
    return info


def render(info: dict, console) -> None:
    t = Table(title="safety-audit doctor", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    ops = info["compiled_ops"]
    for k, v in info.items():
        if k in ("schema_version", "command", "compiled_ops"):
            continue
        t.add_row(k, str(v))
    where = "CPU + CUDA" if ops["cuda"] else "CPU"
    t.add_row("compiled ops", f"[green]loaded ({where})[/green]" if ops["loaded"] else f"[red]not loaded[/red]: {ops['error']}")
    t.add_row("compiled sources", ops["source"])
    console.print(t)
