"""Safe outputs: written atomically (temp file + rename), never overwriting without force, with the
permissions an ordinary file write would give (mkstemp's 0600 would hide CI artifacts from others)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import AuditError


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    p = Path(path)
    if p.exists() and not force:
        raise AuditError("output exists (use --force to overwrite)", p)
    if p.is_dir():
        raise AuditError("output path is a directory", p)
    if not p.parent.exists():
        raise AuditError("output folder does not exist", p.parent)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(path: Path, directory: bool = False) -> None:
    """Give a temp file (or folder tree) the mode a plain open()/mkdir() would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], force: bool = False) -> Path:
    """Call write(tmp_path) then rename tmp over `path`; nothing is left half-written."""
    p = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        default_mode(Path(tmp))
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def write_json(path: str | os.PathLike, data: dict, force: bool = False) -> Path:
    return atomic_write(path, lambda t: t.write_text(json.dumps(data, indent=2) + "\n"), force)


def replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Move a finished folder into place; an existing one is swapped out only with `force`."""
    for root, dirs, files in os.walk(tmp):
        default_mode(Path(root), directory=True)
        for f in files:
            default_mode(Path(root) / f)
    if out.exists():
        if not force:
            raise AuditError("output folder exists (use --force to replace it)", out)
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
