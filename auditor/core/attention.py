"""Reading the final token's attention (the paper's Figure 4): heads reduced to one map per layer, tokens
labelled and sorted into roles, and per layer the share of attention each role receives.

Roles: `template` (every token outside the user's words: the chat or alpaca wrapper, BOS), `function`
(the prompt's function words and punctuation) and `content` (the prompt's other words). The share of
content is the number a reader wants: does a layer look at "bomb" and "steal", or at the scaffolding?
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..backends.base import Attention
from ..errors import AuditError

ROLES = ("content", "function", "template")
# English function words (articles, pronouns, auxiliaries, prepositions, conjunctions, determiners): a closed
# class, so a short list is complete enough; everything else alphanumeric in the prompt is content.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no such what which who whom whose
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs myself
yourself himself herself itself ourselves themselves one ones
am is are was were be been being do does did doing done have has had having will would shall should can could
may might must ought need dare
of in on at by for with about against between into through during before after above below to from up down out
off over under again further than as per via upon onto within without toward towards across along among
around behind beyond near since until till like unlike
and or but nor so yet if then else because although though while whereas whether unless once when where why how
not very too just also only even still quite rather really s t don doesn didn won isn aren wasn weren
there here please
""".split())


def reduce_heads(weights: torch.Tensor, heads: str) -> torch.Tensor:
    """[K, H, T] -> [K, T]: the mean over heads, the max, or one head (a number)."""
    if heads == "mean":
        return weights.mean(1)
    if heads == "max":
        return weights.amax(1)
    try:
        h = int(heads)
    except ValueError:
        raise AuditError(f"--heads '{heads}': expected mean, max or a head number") from None
    if not 0 <= h < weights.shape[1]:
        raise AuditError(f"--heads {h}: the model has heads 0..{weights.shape[1] - 1}")
    return weights[:, h]


@dataclass
class TokenView:
    labels: list[str]  # what each token reads as (whitespace made visible)
    roles: list[str]  # content | function | template


def _visible(piece: str) -> str:
    return piece.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"


def token_view(att: Attention, query: str, id_to_token) -> TokenView:
    """Labels and roles of the tokens; `id_to_token(id)` names tokens whose characters are unknown."""
    start = att.text.find(query)
    span = (start, start + len(query)) if start >= 0 else (0, len(att.text))
    labels, roles = [], []
    for i, tid in enumerate(att.ids):
        s, e = att.offsets[i] if att.offsets else (0, 0)
        if e <= s:  # a special token (BOS, <|im_start|>) or a tokenizer that gives no offsets
            labels.append(_visible(id_to_token(tid).replace("Ġ", " ").replace("Ċ", "\n")))
            roles.append("template" if att.offsets else _role_of_piece(labels[-1]))
            continue
        labels.append(_visible(att.text[s:e]))
        inside = s < span[1] and e > span[0]
        roles.append(_role_at(att.text, s, e) if inside else "template")
    return TokenView(labels, roles)


def _role_at(text: str, s: int, e: int) -> str:
    """The role of characters s:e by the whole word they belong to (a BPE piece of "bomb" is content)."""
    piece = text[s:e]
    first = next((k for k in range(s, e) if text[k].isalnum()), None)
    if first is None:
        return "function" if piece.strip() else "template"  # punctuation / bare whitespace
    a = first
    while a > 0 and (text[a - 1].isalnum() or text[a - 1] == "'"):
        a -= 1
    b = first
    while b < len(text) and (text[b].isalnum() or text[b] == "'"):
        b += 1
    return _role_of_piece(text[a:b])


def _role_of_piece(word: str) -> str:
    w = re.sub(r"[^a-z0-9']", "", word.lower()).split("'")[0]
    if not w:
        return "function"
    return "function" if w in FUNCTION_WORDS else "content"


def role_shares(weights: torch.Tensor, roles: list[str]) -> dict[str, list[float]]:
    """Per layer, the share of the final token's attention on each role ([K, T] rows sum to 1)."""
    mask = {r: torch.tensor([x == r for x in roles], dtype=weights.dtype) for r in ROLES}
    total = weights.sum(1).clamp_min(1e-12)
    return {r: [round(float(v), 5) for v in (weights @ m) / total] for r, m in mask.items()}


def paper_view(weights: torch.Tensor, roles: list[str]) -> tuple[tuple[int, int], torch.Tensor]:
    """The authors' Figure 4 reading (their att_scores.py): the template's tokens cropped, each layer then min-max
    normalized over the prompt's own tokens. They crop by hard-coded counts (x[6:-8] for Llama-2's tokenizer and
    their alpaca_short template, x[5:-6] for Gemma's); here the crop is the prompt's span for any tokenizer.
    Returns ((first, end) of the kept tokens, [K, kept] weights in 0..1)."""
    inside = [i for i, r in enumerate(roles) if r != "template"]
    if not inside:
        raise AuditError("the prompt has no tokens of its own to show")
    a, b = inside[0], inside[-1] + 1
    w = weights[:, a:b]
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    return (a, b), (w - lo) / (hi - lo).clamp_min(1e-12)
