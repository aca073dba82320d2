"""Bundled data files (auditor/data/, package data in the wheel; licenses in data/SOURCES.md)."""

from __future__ import annotations

from importlib import resources


def data_text(name: str) -> str:
    return resources.files("auditor").joinpath("data", name).read_text(encoding="utf-8")


def data_lines(name: str) -> list[str]:
    """Non-empty, non-comment lines of a bundled text file."""
    return [ln.strip() for ln in data_text(name).splitlines() if ln.strip() and not ln.startswith("#")]
