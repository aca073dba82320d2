"""The backend contract: everything a caller may use of a loaded model, and what each backend can do.

Commands ask for capabilities, not class names: `scan` needs HIDDEN_STATES, `locate` WEIGHT_SCALING and
GENERATION, `eval` GENERATION (and NEXT_TOKEN for MMLU). A backend's capabilities are stated once, in its
registry entry (backends/registry.py), so a command can refuse an unfit backend before loading; a loaded
backend reads them from there.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar, ContextManager, Sequence

import torch

from ..errors import AuditError
from ..io.bounded import BoundedRenderer
from ..io.models import ModelRef
from .registry import (ATTENTION, CAPABILITIES, GENERATION, HIDDEN_STATES, NEXT_TOKEN, REGISTRY,  # noqa: F401
                       WEIGHT_SCALING)

Progress = Callable[[int], None]  # called with the number of prompts just finished
Stop = Callable[[str], bool]  # True once the text so far decides what the caller wants (generation may stop)


@dataclass
class Generated:
    """One greedy continuation: its text, how many tokens were generated, whether `stop` ended it early."""

    text: str
    n_tokens: int
    stopped_early: bool = False



@dataclass
class Attention:
    """What the final prompt token attends to: the templated text, its token ids, each token's (start, end)
    characters in the text (None where the tokenizer cannot say), and weights [K layers, heads, T tokens]."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]] | None
    weights: torch.Tensor


class Backend(abc.ABC):
    """A loaded model. Subclasses set `name` (their registry key), `n_layers`, `hidden_size`, `chat_template`
    and `model_ref` (None for an in-memory model); their capabilities are their registry entry's."""

    name: ClassVar[str]
    n_layers: int
    hidden_size: int
    chat_template: str | None
    model_ref: ModelRef | None

    @abc.abstractmethod
    def encode(self, query: str, template: str) -> list[int]:
        """Token ids of one query wrapped in the template (alpaca | chat | raw)."""

    @abc.abstractmethod
    def token_ids(self, text: str) -> list[int]:
        """Token ids of a response fragment (no special tokens)."""

    def final_token_states(self, queries: Sequence[str], template: str, progress: Progress | None = None,
                           last_normed: bool = False) -> torch.Tensor:
        """[K, n, d] float32: raw residual output of every decoder layer at the final prompt token; with
        `last_normed`, the last layer's after the model's final norm (what HF's last hidden_states entry
        holds, and the paper read)."""
        self.require(HIDDEN_STATES)
        return self.states_for_ids([self.encode(q, template) for q in queries], progress, last_normed)

    def states_for_ids(self, ids: list[list[int]], progress: Progress | None = None,
                       last_normed: bool = False) -> torch.Tensor:
        """[K, n, d] states for already tokenized prompts."""
        raise self.unable(HIDDEN_STATES)

    def complete(self, queries: Sequence[str], template: str, max_new_tokens: int = 16,
                 progress: Progress | None = None, stop: Stop | None = None) -> list[Generated]:
        """Greedy continuations, at most `max_new_tokens` each; a sequence may end as soon as `stop(text)`."""
        raise self.unable(GENERATION)

    def generate(self, queries: Sequence[str], template: str, max_new_tokens: int = 16,
                 progress: Progress | None = None, stop: Stop | None = None) -> list[str]:
        """The texts of `complete` (the new tokens only)."""
        return [g.text for g in self.complete(queries, template, max_new_tokens, progress, stop)]

    def opening_probs(self, queries: Sequence[str], template: str, first: Sequence[int],
                      progress: Progress | None = None) -> torch.Tensor:
        """[n, len(first)]: probabilities of the response's first token being each of `first`."""
        raise self.unable(NEXT_TOKEN)

    def next_token_logprobs(self, ids: list[list[int]], progress: Progress | None = None) -> torch.Tensor:
        """[n, V] float64: log-probabilities of the next token after each token sequence, the whole vocabulary
        (the drift metric compares two models' distributions)."""
        raise self.unable(NEXT_TOKEN)

    def final_token_attention(self, query: str, template: str) -> Attention:
        """The final token's attention over the templated query, every layer and head."""
        raise self.unable(ATTENTION)

    def scaled(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> ContextManager:
        """Context manager: the chosen layers' linear maps scaled by alpha; the model restored on exit."""
        raise self.unable(WEIGHT_SCALING)

    def check_scaling(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> None:
        """Raise what `scaled` would raise for these layers and alpha (an overflow), changing nothing."""
        raise self.unable(WEIGHT_SCALING)

    def prepare_scaling(self) -> None:
        """Called before a run's first count when it will scale weights: a backend that computes scaled counts
        another way (llama.cpp: another memory layout) switches now, so the unscaled baseline is computed the
        same way as every scaled count. Nothing to do by default."""

    @property
    def in_flight(self) -> int:
        """How many prompts the backend works on at once (callers size their chunks by it)."""
        return getattr(self, "batch_size", None) or 32

    def tokens_needed(self, texts: Sequence[str]) -> int:
        """The most tokens any of `texts` takes (how far to generate to see an opening)."""
        return max(len(self.token_ids(t)) for t in texts)

    def close(self) -> None:
        """Free the model (idempotent). Subclasses that free more call this too."""
        self.close_chat()

    def close_chat(self) -> None:
        """End the chat template's child process (a new one starts on the next rendering)."""
        worker = self.__dict__.pop("_chat_worker", None)
        if worker is not None:
            worker.close()

    # -- helpers every backend shares ---------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return REGISTRY[self.name].capabilities  # the one statement of what each backend can do

    def require(self, *capabilities: str) -> None:
        missing = [c for c in capabilities if c not in self.capabilities]
        if missing:
            raise self.unable(missing[0])

    def unable(self, capability: str) -> AuditError:
        where = self.model_ref.path if self.model_ref else None
        return AuditError(f"the {self.name} backend has no {capability} capability", where)

    def bounded_chat(self, query: str, render: Callable[[str], str]) -> str:
        """A model's chat template is untrusted code: `render(query)` runs in a capped child process (io/bounded.py:
        memory, time and output bounded), started on first use and kept for the backend's life; anything it
        raises, a sandbox escape attempt included, is the model file's problem, reported as one line."""
        worker = self.__dict__.get("_chat_worker")
        if worker is None:
            where = self.model_ref.path if self.model_ref else None
            worker = self.__dict__["_chat_worker"] = BoundedRenderer(render, "the model's chat template", where)
        return worker(query)

    def no_chat_template(self) -> AuditError:
        where = self.model_ref.path if self.model_ref else None
        return AuditError("model has no chat template (use --template alpaca or raw)", where)


PREFIX_MIN = 64  # shared tokens worth a reused KV prefix (MMLU's 5-shot prefixes are ~500)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def prefix_groups(ids: Sequence[Sequence[int]], min_shared: int = PREFIX_MIN) -> list[tuple[int, list[int]]]:
    """Prompts grouped to share a decoded prefix: [(P, members)], P the tokens every member shares (each keeps
    at least one token of its own, so it has logits to read); P = 0 for prompts best decoded alone. Sorted
    prompts put long common prefixes side by side; a dynamic programme over contiguous runs picks the
    grouping that saves the most prefill tokens ((members − 1) · P per group, P ≥ `min_shared`). Token ids,
    not text: a BPE merge across a textual prefix's boundary cannot make the reused cache differ."""
    order = sorted(range(len(ids)), key=lambda i: list(ids[i]))
    adjacent = [_common(ids[order[k - 1]], ids[order[k]]) for k in range(1, len(order))]
    best, start = [0] * (len(order) + 1), list(range(len(order) + 1))
    for j in range(1, len(order) + 1):  # best saving over order[:j]; a group is order[i-1 : j]
        best[j], start[j] = best[j - 1], j
        P = len(ids[order[j - 1]]) - 1
        for i in range(j - 1, 0, -1):
            P = min(P, adjacent[i - 1], len(ids[order[i - 1]]) - 1)
            if P < min_shared:
                break
            if best[i - 1] + (j - i) * P > best[j]:
                best[j], start[j] = best[i - 1] + (j - i) * P, i
    groups, j = [], len(order)
    while j > 0:
        i = start[j]
        members = sorted(order[i - 1 : j])
        P = min([adjacent[k - 1] for k in range(i, j)] + [len(ids[m]) - 1 for m in members]) if j > i else 0
        groups.append((P, members))
        j = i - 1
    return groups[::-1]
