"""One settings scheme for every command: the command line, then the environment (`SAFETY_AUDIT_<OPTION>`), then
a TOML file (`--config FILE`: shared top-level keys, and a table per command), then the option's default.

Click already has these layers and applies them in exactly this order (an option's `envvar`, the context's
`default_map`): this module wires them to every option of every command, reads and checks the file, and
records each setting's effective value and where it came from, so every report's header can say it.

    # safety-audit.toml
    threads = 2                  # shared: every command that has --threads
    template = "chat"
    [eval]
    limit = 100
    metrics = ["harmful", "over-refusal"]
    [check]
    max-harmful-increase = 0.02

`--force` is never read from a file or the environment: nothing is overwritten unless the command line says so.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

import click
from click.core import ParameterSource

from ..errors import AuditError
from ..io.reports import set_settings

ENV_PREFIX = "SAFETY_AUDIT_"
NOT_SETTINGS = {"force", "config", "help", "version"}
SOURCES = {ParameterSource.COMMANDLINE: "command line", ParameterSource.ENVIRONMENT: "environment",
           ParameterSource.DEFAULT_MAP: "file", ParameterSource.DEFAULT: "default", ParameterSource.PROMPT: "prompt"}


def option_key(param: click.Option) -> str:
    """An option's name in a settings file and the environment: its long flag, e.g. --max-new-tokens ->
    max_new_tokens (the file also accepts max-new-tokens)."""
    longs = [o for o in param.opts if o.startswith("--")] or param.opts
    return max(longs, key=len).lstrip("-").replace("-", "_")


def env_name(param: click.Option) -> str:
    return ENV_PREFIX + option_key(param).upper()


def _settings_of(command: click.Command) -> dict[str, click.Option]:
    return {option_key(p): p for p in command.params if isinstance(p, click.Option) and option_key(p) not in NOT_SETTINGS}


def _as_option_value(value):
    """TOML lists become the comma lists the options take; everything else goes to click's own conversion."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    """Every command under `group` by its path (('eval',), ('reference', 'build'))."""
    out = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out |= _leaves(cmd, path + (name,))
        else:
            out[path + (name,)] = cmd
    return out


def read_config(path: str, command: click.Command, group: click.Group) -> dict:
    """The default_map of `command` from a settings file: its table ([eval], [reference.build]) over the shared
    top-level keys. Unknown keys, in a table or at the top level (a key no command has), are one-line errors
    naming the key and the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError("config file not found", p) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise AuditError(f"malformed config file ({type(e).__name__})", p) from None
    leaves = _leaves(group)
    tables: dict[tuple[str, ...], dict] = {}
    for cmd_path in leaves:
        node = data
        for part in cmd_path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            tables[cmd_path] = node
    heads = {cmd_path[0] for cmd_path in leaves}
    shared = {k: v for k, v in data.items() if k not in heads or not isinstance(v, dict)}
    known_anywhere = {k for c in leaves.values() for k in _settings_of(c)}
    for key in shared:
        if key.replace("-", "_") not in known_anywhere:
            raise AuditError(f"unknown setting '{key}' in the config file (no command has --{key.replace('_', '-')})", p)
    for cmd_path, table in tables.items():
        own = _settings_of(leaves[cmd_path])
        for key in table:
            if key.replace("-", "_") not in own:
                raise AuditError(f"unknown setting '{key}' for '{' '.join(cmd_path)}' in the config file", p)
    here = next((t for cp, t in tables.items() if leaves[cp] is command), {})
    mine = _settings_of(command)
    chosen = {k.replace("-", "_"): v for k, v in shared.items()} | {k.replace("-", "_"): v for k, v in here.items()}
    return {mine[k].name: _as_option_value(v) for k, v in chosen.items() if k in mine}


def _config_callback(group: click.Group):
    def load(ctx: click.Context, param, value):
        if value:
            ctx.default_map = {**(ctx.default_map or {}), **read_config(value, ctx.command, group)}
        return value
    return load


def _recording(command: click.Command):
    """Wrap a command's callback: first record every setting's effective value and its source."""
    callback = command.callback

    @functools.wraps(callback)
    def run(*args, **kwargs):
        ctx = click.get_current_context()
        record = {}
        for key, p in _settings_of(command).items():
            source = ctx.get_parameter_source(p.name)
            value = ctx.params.get(p.name)
            record[key] = {"value": list(value) if isinstance(value, tuple) else value,
                           "source": SOURCES.get(source, str(source))}
        set_settings(record)
        return callback(*args, **kwargs)
    return run


def install(group: click.Group, root: click.Group | None = None) -> None:
    """Give every option of every command (subcommands of groups too) its SAFETY_AUDIT_<OPTION> variable, add
    --config FILE, and record the effective settings (for the report headers)."""
    root = root or group
    for command in group.commands.values():
        if isinstance(command, click.Group):
            install(command, root)
            continue
        for key, p in _settings_of(command).items():
            p.envvar = ENV_PREFIX + key.upper()
        command.params.insert(0, click.Option(
            ["--config"], metavar="FILE.toml", is_eager=True, expose_value=False, callback=_config_callback(root),
            help=f"Settings from a TOML file (shared keys, and a [{command.name}] table); the command line and "
                 f"{ENV_PREFIX}<OPTION> variables take precedence."))
        command.callback = _recording(command)
