"""Harden methods (docs/METHOD.md §1.3), one file each, in one registry: `METHODS[name]`.

A method decides what is frozen before training (`freeze`), which layers LoRA may adapt, and which Trainer
runs it. Every method freezes through `weights.layers`, the one definition of a layer's linear maps, so the
frozen tensors are exactly the ones `locate` scaled. A new method is a new file and its line below.
"""

from __future__ import annotations

from .base import Method, MethodContext
from .freeze_block import FreezeBlock
from .full import Full
from .lisa import Lisa
from .nfft import NFFT
from .sppft import SPPFT

METHODS: dict[str, Method] = {m.name: m() for m in (SPPFT, Full, NFFT, Lisa, FreezeBlock)}

__all__ = ["METHODS", "Method", "MethodContext"]
