"""Safe outputs: written atomically (temp file + rename), never overwriting without force, with the
permissions an ordinary file write would give (mkstemp's 0600 would hide CI artifacts from others)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
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
    check_folder_writable(p.parent)
    return p


@contextmanager
def exclusive(path: Path, what: str):
    """Hold an advisory lock (flock on a hidden '.NAME.lock' beside `path`) for the block: a second writer of
    the same output fails at once, instead of interleaving its checkpoints with the first one's."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditError(f"another {what} is writing this output now", path) from None
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(lock)  # while still held: a waiting writer never locks a file that is being removed
        os.close(fd)


def check_folder_writable(folder: Path) -> None:
    """Try it (a temp file, removed at once): permission bits say nothing for root, and a read-only mount or
    a pseudo-filesystem refuses even root. Checked before the work, not after hours of it."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".safety-audit-probe-"):
            pass
    except OSError as e:
        raise AuditError(f"output folder is not writable ({e.strerror or type(e).__name__})", folder) from None


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
