"""The header every JSON report carries, and reading reports back.

Every report (scan, locate, eval, harden, reference) starts with the same fields: schema_version, tool,
command, model, model_sha256 (of exactly what the backend read), backend, command_line, created. Schema 2
added these fields (and renamed the classifiers); readers accept schema 1 and 2 and refuse newer ones,
which this version cannot interpret.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..errors import AuditError

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
_command_line: list[str] | None = None
_settings: dict | None = None


def set_command_line(argv: list[str] | None) -> None:
    """The CLI records how it was called; library callers leave it unset (null in reports)."""
    global _command_line
    _command_line = list(argv) if argv is not None else None


def set_settings(settings: dict | None) -> None:
    """The CLI records every setting's effective value and where it came from (command line, environment,
    config file, default); library callers leave it unset (null in reports)."""
    global _settings
    _settings = dict(settings) if settings is not None else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ReportHeader:
    command: str
    model: str | None = None
    model_sha256: str | None = None
    backend: str | None = None
    schema_version: int = SCHEMA_VERSION
    tool: str = f"safety-audit {__version__}"
    command_line: str | None = field(default_factory=lambda: shlex.join(_command_line) if _command_line else None)
    created: str = field(default_factory=_now)
    settings: dict | None = field(default_factory=lambda: dict(_settings) if _settings is not None else None)


@dataclass
class Report:
    """Base of the typed reports: the header first, then the command's own fields, as one flat JSON object."""

    header: ReportHeader

    def to_dict(self) -> dict:
        out = asdict(self.header)
        out.update({f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "header"})
        return out


def _plain(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_report(path: str | Path, what: str = "report") -> dict:
    """A JSON report of a schema this version reads; one-line errors otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(f"{what} not found", p) from None
    except (OSError, json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        raise AuditError(f"malformed JSON {what}", p) from None
    if not isinstance(data, dict):
        raise AuditError(f"not a safety-audit {what}", p)
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise AuditError(f"{what} has schema_version {version}, newer than this safety-audit reads "
                         f"({', '.join(map(str, READABLE_SCHEMAS))}): upgrade safety-audit", p)
    if version not in READABLE_SCHEMAS:
        raise AuditError(f"not a safety-audit {what} (no known schema_version)", p)
    return data


def report_range(path: str | Path) -> tuple[int, int]:
    """The safety layers a report names: a locate report's safety_layers, else a scan's initial range."""
    p = Path(path)
    try:
        rep = json.loads(p.read_text())
        rng = rep.get("safety_layers") or rep.get("initial_range")
    except (OSError, json.JSONDecodeError, RecursionError, AttributeError, UnicodeDecodeError):
        raise AuditError("not a readable locate/scan report", p) from None
    if not rng:
        raise AuditError("the report has no safety_layers or initial_range", p)
    return int(rng[0]), int(rng[1])
