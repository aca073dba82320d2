"""The backends' one statement of themselves: name, where the class lives (imported only when opened), the
model kinds it opens, and its capabilities. Below base.py, so a loaded backend reads its capabilities here
and commands check fitness before anything heavy is imported. A new backend is its line in REGISTRY."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

HIDDEN_STATES = "hidden-states"  # per-layer final-token residual states
WEIGHT_SCALING = "weight-scaling"  # a layer range's linear maps scaled by α, restored afterwards
GENERATION = "generation"  # greedy continuations
NEXT_TOKEN = "next-token"  # next-token probabilities after a prompt (MMLU, drift)
CAPABILITIES = (HIDDEN_STATES, WEIGHT_SCALING, GENERATION, NEXT_TOKEN)
ATTENTION = "attention"  # the final token's attention weights over the prompt, per layer and head (torch only)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    target: str  # "module:Class", imported only when the backend is opened
    kinds: tuple[str, ...]  # model kinds it can open ("gguf", "hf")
    default_for: tuple[str, ...]  # kinds for which `auto` picks it
    capabilities: frozenset[str]
    help: str

    def load_class(self) -> type:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


_ALL = frozenset(CAPABILITIES)
REGISTRY: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("llama", "auditor.backends.llamacpp:LlamaCppBackend", ("gguf",), ("gguf",), _ALL,
                "llama.cpp (llama-cpp-python) on the GGUF as it is quantized"),
    BackendSpec("torch", "auditor.backends.hf:TorchBackend", ("hf", "gguf"), ("hf",), _ALL | {ATTENTION},
                "transformers; a GGUF is loaded dequantized"),
    BackendSpec("openai", "auditor.backends.openai:OpenAIBackend", ("remote",), ("remote",), frozenset({GENERATION}),
                "any OpenAI-compatible server (--base-url): generation only"),
)}
