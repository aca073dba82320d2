"""Safe outputs. Every file is written to a temp file beside it, fsynced, and published under its final name
in one step that never replaces a file it was not told to (`--force`): the existence check happens at the
rename itself (renameat2 RENAME_NOREPLACE, else a hard link), not minutes earlier. A folder is swapped in
with one RENAME_EXCHANGE, so a kill never leaves the user without it. Temp files and folders carry the
writer's PID, so a later run removes those whose writer has died (and no one else's). Modes are what an
ordinary write would give (mkstemp's 0600 would hide CI artifacts from others).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterable

from ..errors import AuditError

_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100


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


def check_distinct(*paths) -> None:
    """Two outputs of one command on the same file would lose one at the end of the run: refuse up front."""
    seen: set[str] = set()
    for path in paths:
        if path and path != "-":
            key = os.path.realpath(path)
            if key in seen:
                raise AuditError("two outputs of this command name the same file", path)
            seen.add(key)


@contextmanager
def exclusive(path: Path, what: str):
    """Hold an advisory lock (flock on a hidden '.NAME.lock' beside `path`) for the block: a second writer of
    the same output fails at once, instead of interleaving its checkpoints with the first one's. The holder
    removes the lock file when done; a process that opened the old file just before must not think it holds
    the lock, so after locking we check that the file we locked is still the one at the path (inode)."""
    lock = path.with_name(f".{path.name}.lock")
    for _ in range(100):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditError(f"another {what} is writing this output now", path) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its holder had already removed: take the new one
    else:
        raise AuditError(f"could not take the lock of this output ({lock.name} keeps changing)", path)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(lock)  # while still held: whoever opened it meanwhile sees the inode change and retries
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


# -- temp names that say who wrote them ---------------------------------------------------------------------
def temp_prefix(name: str) -> str:
    """The prefix of this process's temp files for `name`; see clean_stale."""
    return f".{name}.p{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours to judge
    return True


_OUR_TEMP = re.compile(r"^\..+\.p(\d+)\.[^/]*(\.tmp|\.old)$")


def clean_stale(folder: Path, prefix: str = ".") -> list[Path]:
    """Remove temp files and folders under `folder` named `prefix`…'.pPID.'…'.tmp' whose writer PID is dead:
    what a killed run of ours left (a model copy, a half-written report). Never anything without that mark."""
    removed = []
    with suppress(OSError):
        for entry in folder.iterdir():
            m = _OUR_TEMP.match(entry.name) if entry.name.startswith(prefix) else None
            if m and not _alive(int(m.group(1))):
                with suppress(OSError):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                    removed.append(entry)
    return removed


def temp_dir(folder: Path, name: str) -> Path:
    """A temp folder for `name` in `folder`, marked with our PID; stale ones of dead writers go first."""
    clean_stale(folder, f".{name}")
    return Path(tempfile.mkdtemp(dir=folder, prefix=temp_prefix(name), suffix=".tmp"))


# -- publishing -------------------------------------------------------------------------------------------------
def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the C library or the filesystem does not offer it (then we fall back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _publish_new(tmp: Path, dst: Path) -> None:
    """rename tmp to dst only if dst does not exist, decided atomically by the kernel."""
    try:
        if _renameat2(tmp, dst, _RENAME_NOREPLACE):
            return
        try:
            os.link(tmp, dst)  # fails if dst exists
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                raise
            if dst.exists():  # a filesystem without hard links either: the last check, just before the rename
                raise FileExistsError(dst) from None
            os.replace(tmp, dst)
            return
        os.unlink(tmp)
    except FileExistsError:
        raise AuditError("output exists (it appeared while this ran; use --force to overwrite)", dst) from None


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS):  # pseudo-filesystems cannot sync: nothing to lose there
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], force: bool = False) -> Path:
    """Call write(tmp_path), fsync it, then publish it as `path` (replacing only with `force`) and fsync the
    folder: after a power cut the file is either whole under its name or absent, never empty."""
    p = check_writable(path, force)
    clean_stale(p.parent)  # what killed runs of ours left in this folder, whichever output they were writing
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=temp_prefix(p.name), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        default_mode(tmp)
        _fsync(tmp)
        if force:
            os.replace(tmp, p)
        else:
            _publish_new(tmp, p)
        _fsync(p.parent, directory=True)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()
    return p


def write_json(path: str | os.PathLike, data: dict, force: bool = False) -> Path:
    return atomic_write(path, lambda t: t.write_text(json.dumps(data, indent=2) + "\n"), force)


# -- folders a command owns -----------------------------------------------------------------------------------
def _our_temp(name: str) -> bool:
    return bool(_OUR_TEMP.match(name))


def foreign_files(folder: Path, ours: Iterable[str]) -> list[str]:
    """What `folder` holds besides the files a command recorded as its own (with their hidden lock files, and
    temp files of ours): what --force must never delete."""
    own = set(ours)
    own |= {str(Path(f).with_name(f".{Path(f).name}.lock")) for f in own}
    return sorted(rel for p in folder.rglob("*") if not p.is_dir()
                  for rel in [str(p.relative_to(folder))] if rel not in own and not _our_temp(p.name))


def refuse_foreign(folder: Path, ours: Iterable[str], what: str) -> None:
    extra = foreign_files(folder, ours)
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise AuditError(f"output folder holds files {what} did not write ({extra[0]}{more}); --force replaces only "
                         "its own: choose an empty folder", folder)


def replace_dir(tmp: Path, out: Path, force: bool, ours: Callable[[Path], Iterable[str]] | None = None) -> None:
    """Move a finished folder into place. An existing one is swapped out only with `force`, and only if every
    file in it is one `ours(out)` names (what the command recorded having written there); the swap is one
    atomic exchange where the filesystem offers it, so `out` always exists."""
    for root, dirs, files in os.walk(tmp):
        default_mode(Path(root), directory=True)
        for f in files:
            default_mode(Path(root) / f)
    if not out.exists():
        try:
            if not _renameat2(tmp, out, _RENAME_NOREPLACE):
                os.rename(tmp, out)  # an empty folder at `out` would be replaced; a non-empty one fails
        except FileExistsError:
            raise AuditError("output folder appeared while this ran (use --force to replace it)", out) from None
        return
    if not force:
        raise AuditError("output folder exists (use --force to replace it)", out)
    refuse_foreign(out, ours(out) if ours else (), "safety-audit")
    if _renameat2(tmp, out, _RENAME_EXCHANGE):  # tmp now holds the old folder, removed by the caller's cleanup
        return
    trash = out.with_name(f"{temp_prefix(out.name)}swap.old")  # a temp name of ours: clean_stale removes it if we die
    os.replace(out, trash)
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def replace_generated(page: str | os.PathLike, begin: str, end: str, text: str) -> Path:
    """Rewrite the part of a document between (and including) its `begin` and `end` marker lines with `text`,
    atomically: the generated sections of the docs (study tables, report schemas, costs)."""
    p = Path(page)
    old = p.read_text(encoding="utf-8")
    if begin not in old or end not in old:
        raise AuditError(f"no generated section ({begin} ... {end})", p)
    head, rest = old.split(begin, 1)
    new = head + text + rest.split(end, 1)[1]
    return atomic_write(p, lambda t: t.write_text(new, encoding="utf-8"), force=True)
