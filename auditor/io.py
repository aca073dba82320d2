"""Safe outputs: written atomically (temp file + rename), never overwriting without force."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import AuditError


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    p = Path(path)
    if p.exists() and not force:
        raise AuditError("output exists (use --force to overwrite)", p)
    if p.is_dir():
        raise AuditError("output path is a directory", p)
    if not p.parent.exists():
        raise AuditError("output folder does not exist", p.parent)
    return p


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], force: bool = False) -> Path:
    """Call write(tmp_path) then rename tmp over `path`; nothing is left half-written."""
    p = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def write_json(path: str | os.PathLike, data: dict, force: bool = False) -> Path:
    return atomic_write(path, lambda t: t.write_text(json.dumps(data, indent=2) + "\n"), force)
