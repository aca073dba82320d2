"""freeze-block: freeze an equal-width block that is NOT the safety layers (the paper's ablation): the
same mechanics as sppft, a different range, so a comparison isolates where the frozen block sits."""

from __future__ import annotations

from .sppft import SPPFT


class FreezeBlock(SPPFT):
    name = "freeze-block"
    help = "freeze another block of layers (the paper's ablation)"
