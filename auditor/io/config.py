"""Configs are dataclasses whose field metadata carries everything the command line needs: the help text,
and where the field's name, type and default are not enough, its flag, its choices (a literal tuple, or the
name of a registry the CLI knows), its metavar and how its text is parsed. The CLI generates every option from
these fields (`cli/common.options`), so an option and its config field cannot drift apart, and the settings
file and the environment read the same schema.

Plain metadata, no click here: this floor is below everything that knows about the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import AuditError


def setting(default: Any = None, help: str = "", *, factory=None, flag: str | tuple[str, ...] | None = None,  # noqa: A002
            choices: tuple | str | None = None, metavar: str | None = None, parse: str | None = None, cli: bool = True,
            flag_value: Any = None, required: bool = False, least: float | None = None) -> Any:
    """A config field and its option. flag: the option's name(s) when it is not --field-name (a bool that
    defaults to True gets --no-field-name); choices: a tuple, or a registry name ("backends", "classifiers",
    ...); parse: a named parser for its text ("range": 'i-j', "csv": a comma list, "classifier": a name, old
    names accepted); cli=False: not an option (an argument, or set by the workflow); least: the smallest value
    allowed (`check_least` refuses less, naming the option)."""
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse, "cli": cli,
            "flag_value": flag_value, "required": required, "least": least}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_of(config: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config)}[name]


def default_of(config: type, name: str) -> Any:
    f = field_of(config, name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag_of(f: dataclasses.Field) -> str:
    """The option a field is set by on the command line, for messages: --max-new-tokens."""
    flag = f.metadata.get("flag")
    if isinstance(flag, tuple):
        flag = flag[0]
    return flag or "--" + f.name.replace("_", "-")


def check_least(cfg) -> None:
    """Every numeric setting with a `least` bound, checked before anything loads: one line naming the option."""
    for f in dataclasses.fields(cfg):
        least, value = f.metadata.get("least"), getattr(cfg, f.name)
        if least is not None and value is not None and value < least:
            raise AuditError(f"{flag_of(f)} must be >= {least:g} (got {value})")


def parse_range(text: str, what: str = "a layer range") -> tuple[int, int]:
    """'i-j' (inclusive, 0-based; an en dash works too) -> (i, j), or a one-line error naming `what`."""
    try:
        a, b = (int(x) for x in str(text).strip().replace("\u2013", "-").split("-"))
    except ValueError:
        raise AuditError(f"{what}: '{text}' is not a layer range i-j, e.g. 6-12") from None
    if not 0 <= a <= b:
        raise AuditError(f"{what}: '{text}' needs 0 <= i <= j")
    return a, b


def parse_ranges(text: str, what: str, other: str = "") -> tuple[tuple[int, int], ...]:
    """'i-j,i-j,...' -> ranges (at least one); `other` names what else the option takes ("'auto'")."""
    out = tuple(parse_range(item, what) for item in (x.strip() for x in str(text).split(",")) if item)
    if not out:
        raise AuditError(f"{what} is empty: give ranges 'i-j,i-j'" + (f" or {other}" if other else ""))
    return out
