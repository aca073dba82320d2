"""Configs are dataclasses whose field metadata carries the help text, so the CLI's options and the
library's documentation say the same thing (cli.py builds each option's help from it)."""

from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any = None, help: str = "", *, factory=None) -> Any:  # noqa: A002 - the word users see
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(config: type, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(config)}[name].metadata.get("help", "")


def default_of(config: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
