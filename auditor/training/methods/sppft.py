"""sppft: the safety layers' attention and MLP linear maps frozen; their norms, the embeddings and the
lm_head stay trainable (the paper's Safe Partial-Parameter Fine-Tuning)."""

from __future__ import annotations

from .base import Method, MethodContext, freeze_range


class SPPFT(Method):
    name = "sppft"
    help = "freeze the safety layers' linear maps (the paper's method)"
    needs_layers = freezes_range = True

    def freeze(self, ctx: MethodContext) -> dict:
        return freeze_range(ctx)
