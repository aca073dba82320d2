"""Model backends behind one Protocol; a new backend is one new file."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from ..prompts import ALPACA

Progress = Callable[[int], None]  # called with the number of prompts just finished


class Backend(Protocol):
    name: str  # "llama" | "torch"
    n_layers: int
    hidden_size: int

    def encode(self, query: str, template: str) -> list[int]:
        """Token ids of one query wrapped in the template (alpaca | chat | raw)."""

    def final_token_states(self, queries: Sequence[str], template: str, progress: Progress | None = None) -> torch.Tensor:
        """[K, n, d] float32: raw residual output of every decoder layer at the final prompt token."""

    def generate(self, queries: Sequence[str], template: str, max_new_tokens: int = 16,
                 progress: Progress | None = None) -> list[str]:
        """Greedy continuations (text of the new tokens only)."""

    def opening_probs(self, queries: Sequence[str], template: str, first: Sequence[int],
                      progress: Progress | None = None) -> torch.Tensor:
        """Probabilities of the response's first token being each of `first` (one prefill per prompt):
        [n, len(first)]. MMLU reads the answer letter from it."""

    def scaled(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True):
        """Context manager: the chosen layers' linear maps scaled by alpha; the model restored on exit."""

    def token_ids(self, text: str) -> list[int]:
        """Token ids of a response fragment (no special tokens)."""

    def close(self) -> None: ...


def wrap(query: str, template: str, chat: Callable[[str], str]) -> str:
    """Prompt text for a query; `chat` renders the model's own chat template."""
    if template == "alpaca":
        return ALPACA.format(q=query)
    if template == "raw":
        return query
    return chat(query)
