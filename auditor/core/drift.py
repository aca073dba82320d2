"""Drift from a base model without a judge: how far a model's next-token distribution has moved from its
base's on harmless prompts (the collateral-damage measure of heretic; docs/verdicts.md).

Per prompt: the mean over the first k answer positions of KL(P_base || P_model) in nats, the base's
distribution first, as heretic computes it. k = 1 reads the distribution of the first answer token; for
k > 1 both models are teacher-forced on the base's greedy answer, so both are read at the same positions of
the same text. Both models must tokenize every prompt alike (the same vocabulary and template), or the
comparison means nothing and is refused.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import AuditError


def kl(base_logprobs: torch.Tensor, model_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(base || model) per row, in nats, from two [m, V] log-probability tensors (float64)."""
    p = base_logprobs.exp()
    terms = torch.where(p > 0, p * (base_logprobs - model_logprobs), torch.zeros_like(p))
    return terms.sum(-1).clamp(min=0.0)  # rounding can leave -1e-17 for identical rows


def forced_sequences(base, prompts: Sequence[str], prompt_ids: list[list[int]], template: str,
                     k: int) -> tuple[list[list[int]], list[int]]:
    """The token sequences whose next token is read: each prompt (its ids), then (k > 1) the prompt followed by
    the first 1 … k−1 tokens of the base's greedy answer. Returns (sequences, the prompt each belongs to)."""
    if k == 1:
        return prompt_ids, list(range(len(prompts)))
    answers = base.generate(list(prompts), template, k)
    seqs, owner = [], []
    for i, (ids, text) in enumerate(zip(prompt_ids, answers)):
        forced = base.token_ids(text)[: k - 1]
        for j in range(len(forced) + 1):  # a shorter answer (it ended) gives fewer positions
            seqs.append(list(ids) + list(forced[:j]))
            owner.append(i)
    return seqs, owner


def drift(model, base, prompts: Sequence[str], template: str, k: int = 1, reporter=None) -> list[float]:
    """Per prompt, the mean KL(P_base || P_model) over its first k answer positions."""
    if k < 1:
        raise AuditError(f"--kl-positions must be >= 1 (got {k})")
    mine = [model.encode(q, template) for q in prompts]
    theirs = [base.encode(q, template) for q in prompts]
    if mine != theirs:
        raise AuditError("the model and --base tokenize the prompts differently (another vocabulary or template): "
                         "their next-token distributions cannot be compared", getattr(base.model_ref, "path", None))
    seqs, owner = forced_sequences(base, prompts, theirs, template, k)
    if reporter:
        reporter.start(f"kl: next-token distributions ({k} position{'s' if k > 1 else ''}, base and model)", 2 * len(seqs))
    step = reporter.advance if reporter else None
    p_base = base.next_token_logprobs(seqs, step)
    p_model = model.next_token_logprobs(seqs, step)
    if p_base.shape != p_model.shape:
        raise AuditError(f"the model and --base have different vocabularies ({p_model.shape[1]} vs {p_base.shape[1]} tokens)",
                         getattr(base.model_ref, "path", None))
    per_position = kl(p_base, p_model)
    sums, counts = [0.0] * len(prompts), [0] * len(prompts)
    for i, v in zip(owner, per_position.tolist()):
        sums[i] += v
        counts[i] += 1
    return [s / c for s, c in zip(sums, counts)]
