"""Options every model-running command shares (scan, locate, eval): which model, which backend, which
prompt template, how many threads."""

from __future__ import annotations

from dataclasses import dataclass

from ..io.config import setting


@dataclass
class ModelOptions:
    model: str | None = setting(None, "A .gguf file, an HF model folder, 'reference', or omitted: the bundled SmolLM2.")
    backend: str = setting("auto", "GGUF -> llama.cpp by default; HF folder -> torch; torch on a GGUF loads it dequantized.")
    template: str = setting("alpaca", "alpaca (the paper's) | chat (the model's own: use the one it was aligned with) | raw.")
    threads: int | None = setting(None, "CPU threads (default: all cores).")
    batch: int | None = setting(None, "Prompts generated together (continuous batching; default: automatic).")
