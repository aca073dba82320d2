"""Floor 4: model backends behind one contract (base.py), chosen through a registry.

A new backend is one new file with a `Backend` subclass, plus its line in `REGISTRY` (registry.py). The registry
knows each backend's capabilities and which model kinds it opens without importing it (llama.cpp and
transformers are heavy), so commands can check fitness before anything loads.
"""

from __future__ import annotations

from ..errors import AuditError
from ..io.models import ModelRef
from .base import Backend, Progress
from .registry import (ATTENTION, CAPABILITIES, GENERATION, HIDDEN_STATES, NEXT_TOKEN, REGISTRY, WEIGHT_SCALING,
                       BackendSpec)

__all__ = ["Backend", "Progress", "BackendSpec", "REGISTRY", "BACKEND_CHOICES", "choose_backend", "open_backend",
           "check_capabilities",
           "ATTENTION", "CAPABILITIES", "GENERATION", "HIDDEN_STATES", "NEXT_TOKEN", "WEIGHT_SCALING"]


BACKEND_CHOICES = ("auto", *REGISTRY)


def choose_backend(model: ModelRef, backend: str = "auto", needs: tuple[str, ...] = ()) -> str:
    """The backend name for a model: `auto` picks the default for the model's kind that has `needs`."""
    if backend != "auto" and backend not in REGISTRY:
        raise AuditError(f"unknown backend '{backend}' (choose from {', '.join(BACKEND_CHOICES)})")
    if backend == "auto":
        able = [s for s in REGISTRY.values() if set(needs) <= s.capabilities]
        # the kind's default backend; else any that opens the kind (attention on a GGUF: torch, dequantized)
        fits = [s for s in able if model.kind in s.default_for] or [s for s in able if model.kind in s.kinds]
        if not fits:
            raise AuditError(f"no backend opens this model with {', '.join(needs) or 'any capability'}", model.path)
        return fits[0].name
    spec = REGISTRY[backend]
    check_capabilities(backend, needs)
    if model.kind not in spec.kinds:
        kinds = " or ".join(KIND_NAMES[k] for k in spec.kinds)
        raise AuditError(f"the {backend} backend needs {kinds}", None if model.kind == "remote" else model.path)
    return backend


KIND_NAMES = {"gguf": "a .gguf file", "hf": "a Hugging Face model folder", "remote": "a server (--base-url)"}


def library_version(backend: str) -> str:
    """The version of the library that computes a backend's numbers, for cache and journal keys: another
    llama.cpp or transformers may tokenize, round or decode greedily to other text."""
    from importlib.metadata import version

    if backend == "llama":
        return version("llama_cpp_python")
    if backend == "torch":
        return version("transformers")
    return backend  # a server: its model label (URL, served name) is in the key; its version is not ours to see


def check_capabilities(backend: str, needs: tuple[str, ...]) -> None:
    """Refuse a backend that cannot do what the command needs, before anything is resolved or loaded."""
    spec = REGISTRY.get(backend)
    missing = [c for c in needs if spec is not None and c not in spec.capabilities]
    if missing:
        raise AuditError(f"the {backend} backend has no {missing[0]} capability ({spec.help}): use "
                         f"--backend {' or '.join(n for n, s in REGISTRY.items() if set(needs) <= s.capabilities)}")


def open_backend(model: ModelRef, backend: str = "auto", needs: tuple[str, ...] = (), **kwargs) -> Backend:
    """Instantiate the backend for a model, checked for the capabilities the caller needs."""
    name = choose_backend(model, backend, needs)
    return REGISTRY[name].load_class()(model, **kwargs)
