"""full: every parameter trainable (the FullFT baseline)."""

from __future__ import annotations

from .base import Method


class Full(Method):
    name = "full"
    help = "every parameter trainable (baseline)"
