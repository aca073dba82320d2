"""Convert an HF model folder to GGUF with llama.cpp's own converter (`convert_hf_to_gguf.py`).

Why llama.cpp's converter and not ours: each architecture's GGUF layout (Gemma's norms stored as 1 + w,
Llama's permuted q/k, Phi-3's fused maps, which hyper-parameters become which keys) is defined by that
script, version by version, alongside the C++ that reads it. Rewriting it per family would drift. The script
ships in llama-cpp-python's source distribution, the same one the llama.cpp backend is built from, so
`scripts/setup.sh` extracts it, with its own gguf-py and `conversion/` package, into
`<venv>/share/llama.cpp-convert/`, and a VERSION file says which llama-cpp-python it came from. A converter
from another llama.cpp version could write keys the installed llama.cpp reads differently, so it is refused.

`export_gguf` (gguf_export.py) is the other route: a GGUF input's own metadata reused for trained weights.
This one needs no GGUF to start from, so `harden --gguf` works on an HF input of any family llama.cpp reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import AuditError
from .files import atomic_write

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
ENV = "SAFETY_AUDIT_LLAMA_CONVERTER"
SECONDS = 3600.0  # a 70B f16 conversion on a slow disk; a hung converter must not hang a command forever


def converter_path() -> Path:
    """The converter script: $SAFETY_AUDIT_LLAMA_CONVERTER, else the one scripts/setup.sh installed."""
    given = os.environ.get(ENV)
    path = Path(given) if given else Path(sys.prefix) / "share" / "llama.cpp-convert" / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise AuditError(f"llama.cpp's convert_hf_to_gguf.py is not installed (run scripts/setup.sh, or set {ENV} "
                         "to the script in a llama.cpp checkout of the same version as llama-cpp-python)", path)
    if not given:
        _check_version(path.parent / "VERSION")
    return path


def _check_version(stamp: Path) -> None:
    try:
        import llama_cpp
    except ImportError:
        return  # nothing installed to disagree with
    made_for = stamp.read_text().strip() if stamp.is_file() else "unknown"
    if made_for != llama_cpp.__version__:
        raise AuditError(f"the installed converter is from llama-cpp-python {made_for}, but {llama_cpp.__version__} "
                         "is installed: run scripts/setup.sh again", stamp)


def convert_hf_folder(folder: str | os.PathLike, dst: str | os.PathLike, outtype: str = "f16",
                      force: bool = False) -> Path:
    """Write `dst` (atomically) from the HF folder: llama.cpp's converter in a child process, its own gguf-py
    first on its path (the script arranges that), its log kept only to name a failure."""
    if outtype not in OUTTYPES:
        raise AuditError(f"unknown GGUF type '{outtype}' (choose {', '.join(OUTTYPES)})")
    return atomic_write(dst, lambda tmp: _run(Path(folder), tmp, "--outtype", outtype), force)


def check_convertible(folder: str | os.PathLike) -> None:
    """Fail now, in seconds, if the converter cannot read this folder's architecture or tokenizer: its
    vocabulary-only pass reads both and writes no weights. harden runs it before training, not after."""
    with tempfile.TemporaryDirectory(prefix="safety-audit-convert-check-") as d:
        _run(Path(folder), Path(d) / "vocab.gguf", "--vocab-only")


def _run(folder: Path, out: Path, *args: str) -> None:
    script = converter_path()
    if not (folder / "config.json").is_file():
        raise AuditError("not an HF model folder (no config.json)", folder)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    cmd = [sys.executable, str(script), str(folder), "--outfile", str(out), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SECONDS)
    except subprocess.TimeoutExpired:
        raise AuditError(f"llama.cpp's converter ran over {SECONDS:.0f} s", folder) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise AuditError("llama.cpp's converter cannot convert this model: " + (lines[-1] if lines else
                         f"exit code {done.returncode}"), folder)
