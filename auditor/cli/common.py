"""What every command's options and output share: options whose help comes from the config dataclasses,
the --json/--force/--quiet trio, torch placement options, and writing a report (table, JSON, plot)."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console

from ..backends.devices import DTYPE_CHOICES
from ..core.refusal import CLASSIFIERS, RENAMED
from ..io.config import default_of, help_of
from ..io.files import check_distinct, check_writable, write_json
from ..render.commandline import err, layer_range


def stdout() -> Console:
    """stdout console; piped or logged output gets 160 columns for tables, not rich's 80 (it cut every scan
    column), and plain lines are never broken (soft_wrap)."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160, soft_wrap=True)


def opt(config: type, name: str, *decls: str, **kw):
    """A click option whose help (and default) come from the config dataclass field `name`."""
    kw.setdefault("help", help_of(config, name))
    if not kw.get("is_flag") and "default" not in kw:
        kw["default"] = default_of(config, name)
        kw.setdefault("show_default", kw["default"] is not None)
    return click.option(*decls, name, **kw)


def classifier_option(ctx, param, value):
    if value in RENAMED:
        err.print(f"note: --classifier {value} is now called '{RENAMED[value]}'; the report records the new name")
        return RENAMED[value]
    return value


CLASSIFIER_CHOICE = click.Choice([*CLASSIFIERS, *RENAMED])
json_opt = click.option("--json", "json_path", default=None, metavar="PATH", help="Write the JSON report (schema_version 2); '-' prints it to stdout.")
force_opt = click.option("--force", is_flag=True, help="Overwrite existing outputs.")
quiet_opt = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
threads_opt = click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")


def range_option(ctx, param, value):
    """click callback: an 'i-j' layer range (inclusive, 0-based)."""
    return layer_range(value)


def placement_options(config: type):
    """--device, --dtype, --device-map (torch backend), help from the config."""
    def wrap(f):
        for name, decl, kw in reversed((("device", "--device", {"metavar": "auto|cpu|cuda[:N]"}),
                                        ("dtype", "--dtype", {"type": click.Choice(DTYPE_CHOICES)}),
                                        ("device_map", "--device-map", {"type": click.Choice(["auto"])}))):
            f = opt(config, name, decl, **kw)(f)
        return f
    return wrap


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
