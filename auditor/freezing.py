"""Which parameters a method freezes (DESIGN §1.3).

sppft / freeze-block: every attention and MLP parameter of the chosen layers (norms, embeddings and the
lm_head stay trainable). nfft: the same number of parameters, as whole output neurons (rows of the linear
maps) ranked by safety-critical importance à la Wei et al. 2024: SNIP importance |W ⊙ ∇W| on safety data
minus importance on utility data, each normalised by its total. Row freezing zeroes those rows' gradients
(AdamW with no weight decay then leaves them bit-identical).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .backends.hf import decoder_layers


def block_parameters(model: torch.nn.Module, layers: Sequence[int]) -> dict[str, torch.nn.Parameter]:
    """Attention and MLP parameters (not norms) of the chosen decoder layers, by full name."""
    blocks = decoder_layers(model)
    ids = {id(blocks[k]) for k in layers}
    out = {}
    for name, mod in model.named_modules():
        if id(mod) in ids:
            for pname, p in mod.named_parameters():
                if "norm" not in pname:  # input_layernorm, post_attention_layernorm, q_norm, ... stay trainable
                    out[f"{name}.{pname}"] = p
    return out


def freeze_block(model: torch.nn.Module, layers: Sequence[int]) -> list[str]:
    params = block_parameters(model, layers)
    for p in params.values():
        p.requires_grad_(False)
    return sorted(params)


def _snip_row_importance(model, batches, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    imp = {n: torch.zeros(p.shape[0]) for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                imp[n] += (p.detach() * p.grad).abs().reshape(p.shape[0], -1).sum(1).float()
        model.zero_grad(set_to_none=True)
    total = sum(float(v.sum()) for v in imp.values()) or 1.0
    return {n: v / total for n, v in imp.items()}


def freeze_safety_neurons(model: torch.nn.Module, budget: int, safety_batches, utility_batches) -> dict:
    """Freeze whole rows of the decoder's linear weights, most safety-specific first, until `budget`
    parameters are frozen. Returns {param name: frozen row indices} and installs gradient masks."""
    candidates = {n: p for n, p in model.named_parameters()
                  if p.dim() == 2 and p.requires_grad and ".layers." in n and "embed" not in n}
    s = _snip_row_importance(model, safety_batches, candidates)
    u = _snip_row_importance(model, utility_batches, candidates)
    ranked = sorted(((float(s[n][r] - u[n][r]), n, r) for n in candidates for r in range(candidates[n].shape[0])), reverse=True)
    frozen: dict[str, list[int]] = {}
    count = 0
    for _, n, r in ranked:
        if count >= budget:
            break
        frozen.setdefault(n, []).append(r)
        count += candidates[n].shape[1]
    for n, rows in frozen.items():
        mask = torch.ones(candidates[n].shape[0], 1, dtype=candidates[n].dtype)
        mask[rows] = 0
        candidates[n].register_hook(lambda g, m=mask: g * m)
    return {"rows": {n: sorted(r) for n, r in frozen.items()}, "frozen_parameters": count}
