"""nfft: freeze the same number of parameters as SPPFT would, as whole output neurons of the selected
linear maps, ranked by safety-critical importance à la Wei et al. 2024: SNIP importance |W ⊙ ∇W| on safety
data minus importance on utility data, each normalised by its total. Freezing a neuron zeroes its row's
gradient (AdamW with no weight decay then leaves it bit-identical)."""

from __future__ import annotations

import torch

from ...weights.layers import LinearMap, block_parameters, linear_maps
from ..data import Collator, SFTData, alignment_rows
from .base import Method, MethodContext


def _neuron_importance(model, batches, maps: list[LinearMap]) -> list[torch.Tensor]:
    """Per map, SNIP importance summed over each output neuron, normalised by the total over all maps."""
    imp = [torch.zeros(m.weight.shape[m.out_axis]) for m in maps]
    model.zero_grad(set_to_none=True)
    for batch in batches:
        model(**batch).loss.backward()
        for i, m in enumerate(maps):
            w = m.weight
            if w.grad is not None:
                score = (w.detach() * w.grad).abs().movedim(m.out_axis, 0)
                imp[i] += score.reshape(score.shape[0], -1).sum(1).float()
        model.zero_grad(set_to_none=True)
    total = sum(float(v.sum()) for v in imp) or 1.0
    return [v / total for v in imp]


def freeze_safety_neurons(model: torch.nn.Module, budget: int, safety_batches, utility_batches) -> dict:
    """Freeze whole output neurons of the decoder's linear maps, most safety-specific first, until `budget`
    parameters are frozen. Returns {weight name: frozen neuron indices} and installs gradient masks."""
    maps = [m for m in linear_maps(model) if m.weight.requires_grad]
    s = _neuron_importance(model, safety_batches, maps)
    u = _neuron_importance(model, utility_batches, maps)
    ranked = sorted(((float(s[i][r] - u[i][r]), i, r) for i in range(len(maps)) for r in range(len(s[i]))), reverse=True)
    frozen: dict[int, list[int]] = {}
    count = 0
    for _, i, r in ranked:
        if count >= budget:
            break
        frozen.setdefault(i, []).append(r)
        w = maps[i].weight
        count += w.numel() // w.shape[maps[i].out_axis]
    for i, rows in frozen.items():
        m = maps[i]
        shape = [1] * m.weight.dim()
        shape[m.out_axis] = m.weight.shape[m.out_axis]
        mask = torch.ones(shape, dtype=m.weight.dtype)
        mask.view(-1)[rows] = 0
        m.weight.register_hook(lambda g, mask=mask: g * mask)
    return {"rows": {f"{maps[i].name}.weight": sorted(r) for i, r in frozen.items()}, "frozen_parameters": count}


class NFFT(Method):
    name = "nfft"
    help = "freeze as many safety-critical neurons as SPPFT freezes parameters (baseline)"
    needs_layers = True  # the range sets the budget
    supports_lora = False

    def freeze(self, ctx: MethodContext) -> dict:
        budget = sum(p.numel() for p in block_parameters(ctx.model, ctx.layer_range).values())
        collate = Collator(ctx.tokenizer.pad_token_id)
        safe = SFTData(alignment_rows(16), ctx.tokenizer, ctx.template, ctx.cutoff)

        def batches(ds):
            return [collate([ds[i] for i in range(j, min(j + 4, len(ds)))]) for j in range(0, min(len(ds), 16), 4)]

        if ctx.status:
            ctx.status("nfft: ranking safety-critical neurons (SNIP, safety minus utility)")
        return freeze_safety_neurons(ctx.model, budget, batches(safe), batches(ctx.data))
