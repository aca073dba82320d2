"""What a harden method is: what it freezes, what LoRA may adapt, which Trainer runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...weights.layers import block_parameters, linear_maps


@dataclass
class MethodContext:
    """What a method sees: the model and data, the layer range it was given, its own settings."""

    model: Any
    tokenizer: Any
    data: Any  # SFTData
    layers: tuple[int, int] | None
    n_layers: int
    template: str
    cutoff: int
    settings: Any = None  # an instance of the method's `Settings` (None for a method without any)
    status: Any = None  # callable(str) for progress messages
    validation: Any = None  # SFTData held out for evaluation (harden --compat paper), or None

    @property
    def layer_range(self) -> range:
        return range(self.layers[0], self.layers[1] + 1) if self.layers else range(0)


class Method:
    name: ClassVar[str]
    help: ClassVar[str]
    needs_layers: ClassVar[bool] = False  # a range to freeze (or, for nfft, the size of its budget)
    freezes_range: ClassVar[bool] = False  # the range itself is frozen (sppft, freeze-block)
    supports_lora: ClassVar[bool] = True
    Settings: ClassVar[type | None] = None  # a dataclass of setting() fields: the method's own options

    def freeze(self, ctx: MethodContext) -> dict:
        """Freeze parameters (full fine-tuning path); returns what was frozen, for the report."""
        return {}

    def lora_targets(self, ctx: MethodContext) -> list[str]:
        """Module names LoRA adapts: every selected linear map outside the frozen range."""
        frozen = set(ctx.layer_range) if self.freezes_range else set()
        return [m.name for m in linear_maps(ctx.model, [k for k in range(ctx.n_layers) if k not in frozen])]

    def trainer(self, ctx: MethodContext) -> tuple[type, dict]:
        """The Trainer class and its extra keyword arguments."""
        from transformers import Trainer  # ~3 s: only when training starts, not for every --help

        return Trainer, {}


def freeze_range(ctx: MethodContext) -> dict:
    params = block_parameters(ctx.model, ctx.layer_range)
    for p in params.values():
        p.requires_grad_(False)
    return {"parameters": sorted(params)}
