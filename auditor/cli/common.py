"""What every command's options and output share. Options are generated from config dataclass fields
(`options`): the flag, type, default, help, choices and parser all come from the field (`io.config.setting`),
and choices named after a registry come from that registry, so an option cannot drift from its setting.
Then writing a report (table, JSON, plot)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing

import click
from rich.console import Console

from ..backends import BACKEND_CHOICES
from ..backends.devices import DTYPE_CHOICES
from ..core.judge_formats import FORMATS as JUDGE_FORMATS
from ..core.refusal import CLASSIFIERS, RENAMED, canonical_classifier
from ..errors import AuditError
from ..io.config import default_of, parse_range
from ..io.files import check_distinct, check_writable, write_json
from ..io.prompts import TEMPLATES
from ..training.attacks import ATTACKS
from ..training.methods import METHODS
from ..workflows.gate import INCONCLUSIVE
from ..workflows.harden import GGUF_TYPES, TRAINING_TEMPLATES
from ..workflows.evaluate import METRICS
from .commandline import err

REGISTRIES = {  # a field's `choices="name"`: the registry that lists them (an entry added there is a choice here)
    "backends": lambda: BACKEND_CHOICES,
    "templates": lambda: TEMPLATES,
    "templates+auto": lambda: ("auto", *TEMPLATES),
    "training-templates": lambda: TRAINING_TEMPLATES,
    "dtypes": lambda: DTYPE_CHOICES,
    "classifiers": lambda: (*CLASSIFIERS, *RENAMED),
    "metrics": lambda: tuple(METRICS),
    "methods": lambda: tuple(METHODS),
    "attacks": lambda: ATTACKS,
    "judge-formats": lambda: tuple(JUDGE_FORMATS),
    "gguf-types": lambda: GGUF_TYPES,
    "inconclusive": lambda: INCONCLUSIVE,
}


def stdout() -> Console:
    """stdout console; piped or logged output gets 160 columns for tables, not rich's 80 (it cut every scan
    column), and plain lines are never broken (soft_wrap)."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160, soft_wrap=True)


class FieldOption(click.Option):
    """An option generated from a config dataclass field; `config` and `field` say which (the architecture test
    checks that every option of every command is one)."""

    def __init__(self, *args, config: type, field: str, prefix: str = "", **kw):
        super().__init__(*args, **kw)
        self.config, self.field, self.prefix = config, field, prefix


def _csv(ctx, param, value):
    """click callback: a comma list (a TOML list from --config arrives joined) -> a tuple."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(x).strip() for x in items if str(x).strip())


def _range(ctx, param, value):
    """click callback: an 'i-j' layer range (inclusive, 0-based)."""
    if value is None:
        return None
    try:
        return parse_range(value, param.opts[0])
    except AuditError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


def _classifier(ctx, param, value):
    return canonical_classifier(value, note=lambda m: err.print(f"note: {m}", markup=False))


PARSERS = {"csv": _csv, "range": _range, "classifier": _classifier}
TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}
NOT = "not__"  # the parameter name of an inverted flag: --no-cache sets not__use_cache


def _base_type(hint):
    """int | None -> int; tuple[int, int] -> tuple (typed as text, parsed by the field's `parse`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return typing.get_origin(hint) or hint


def field_option(config: type, f: dataclasses.Field, hint, prefix: str = "") -> FieldOption:
    """The click option of one config field: flag, type, default, help, choices and parser from the field."""
    meta = f.metadata
    text = meta.get("help", "")
    default = default_of(config, f.name)
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    decls = list(flag) if isinstance(flag, tuple) else [flag]
    kind = _base_type(hint)
    kw: dict = {"help": text() if callable(text) else text, "cls": FieldOption, "config": config, "field": f.name,
                "prefix": prefix}
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    if kind is bool:
        # a setting on by default is turned off by --no-<name>, read back as False by `configs` (click's own
        # flag_value=False would read SAFETY_AUDIT_NO_CACHE=1 as "cache on")
        inverted = default is True
        if inverted and not meta.get("flag"):
            decls = ["--no-" + f.name.replace("_", "-")]
        return click.option(*decls, prefix + (NOT if inverted else "") + f.name, is_flag=True, default=False, **kw)
    choices = meta.get("choices")
    if isinstance(choices, str):
        choices = REGISTRIES[choices]()
    if choices and meta.get("parse") != "csv":
        kw["type"] = click.Choice(list(choices))
    elif meta.get("flag_value") is not None:  # --survey alone means 2; --survey 3 means 3
        kw |= {"type": TYPES[type(meta["flag_value"])], "is_flag": False, "flag_value": meta["flag_value"]}
    else:
        kw["type"] = TYPES.get(kind, click.STRING)
    if meta.get("parse"):
        kw["callback"] = PARSERS[meta["parse"]]
        if isinstance(default, tuple):  # shown and read as it is typed
            default = ",".join(map(str, default))
    if meta.get("required"):
        kw["required"] = True
    else:
        kw |= {"default": default, "show_default": default is not None and default is not False}
    return click.option(*decls, prefix + f.name, **kw)


def options(config: type, skip: tuple[str, ...] = (), prefix: str = ""):
    """Every command-line field of `config` (and its bases), as click options in field order. `prefix` keeps the
    parameter names of one config apart from another's (a harden method's settings: lisa__rho)."""
    hints = typing.get_type_hints(config)
    made = [field_option(config, f, hints[f.name], prefix) for f in dataclasses.fields(config)
            if f.metadata.get("cli", False) and f.name not in skip]

    def wrap(fn):
        for option in reversed(made):
            fn = option(fn)
        return fn
    return wrap


def configs(kw: dict, *classes: type, prefix: str = "", **given) -> list:
    """A command's options back as its config dataclasses (each takes its own fields; `given`, e.g. MODEL, goes
    to the first); an inverted flag (--no-cache) becomes its field's False. With `prefix`, only the options of
    that prefix are read (and the rest of `kw` is not checked)."""
    if prefix:
        kw = {k.removeprefix(prefix): v for k, v in kw.items() if k.startswith(prefix)}
    values = {k.removeprefix(NOT): (not v if k.startswith(NOT) else v) for k, v in kw.items() if "__" not in
              k.removeprefix(NOT)}
    out = []
    for i, cls in enumerate(classes):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        out.append(cls(**{k: v for k, v in values.items() if k in names}, **(given if i == 0 else {})))
    unused = set(values) - {f.name for cls in classes for f in dataclasses.fields(cls)}
    assert not unused, f"options with no config field: {unused}"
    return out


REMOTE = ("base_url", "served_model", "api_key_env", "allow_insecure_http")  # the openai backend's own options


def check_outputs(force: bool, *paths) -> None:
    """Refuse existing outputs, and two outputs on one file, before the long part, not after it."""
    check_distinct(*paths)
    for p in paths:
        if p and p != "-":
            check_writable(p, force)


def emit(report: dict, json_path, plot_path, force: bool, render, plot=None) -> None:
    """The table (or the JSON on stdout with --json -), then the JSON file and the plot, atomically."""
    if json_path == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        render(report)
    if json_path and json_path != "-":
        write_json(json_path, report, force)
        err.print(f"wrote {json_path}", markup=False)
    if plot_path and plot:
        plot(report, plot_path, force)
        err.print(f"wrote {plot_path}", markup=False)
