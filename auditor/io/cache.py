"""Every cache of the product, in one place, keyed by content.

- `content_hash(path)`: SHA-256 of a whole file (or of every file at the top of a model folder). Why the
  whole file: a `scale_gguf` copy has the size, header and last tensors of its source and differs only in
  middle layers; a retrained HF folder keeps its path. Hashing 100 MB takes ~0.2 s, so the result is
  memoised by (path, size, mtime, inode) in memory and on disk: a re-run does not re-hash.
- `Journal`: an append-only JSONL of finished work (locate's counts, the reference build's distilled
  answers). One write() per line on an O_APPEND file, so two processes never tear each other's lines; a
  line cut by a kill is skipped and closed off.
- `StateStore`: chunks of hidden states as safetensors with a checksum in their metadata; a chunk that
  fails to load or to match its checksum is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from .files import atomic_write

_MEMO: dict[tuple, str] = {}
_DISK: dict[Path, dict[str, str]] = {}


def cache_dir() -> Path:
    base = os.environ.get("SAFETY_AUDIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "safety-audit")
    return Path(base)


def cached_journal(kind: str, key: str) -> Path:
    """Where a command's journal lives when the user names none: the cache, under a content key (so a killed
    run resumes, and another model or configuration never reads it)."""
    path = cache_dir() / "journals" / f"{kind}-{key}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def sha256_json(obj) -> str:
    """Content hash of JSON-able data (training rows, recipe keys, cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _memo_file() -> Path:
    return cache_dir() / "fingerprints.jsonl"


def _disk_memo() -> dict[str, str]:
    """The on-disk memo, read once per process (per cache folder) and kept up to date by file_hash."""
    f = _memo_file()
    if f not in _DISK:
        _DISK[f] = {row["key"]: row["sha256"] for row in Journal(f).rows()
                    if isinstance(row.get("key"), str) and isinstance(row.get("sha256"), str)}
    return _DISK[f]


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the whole file, memoised by (path, size, mtime, inode)."""
    path = Path(path)
    key = _stat_key(path)
    if key in _MEMO:
        return _MEMO[key]
    skey = json.dumps(key)
    digest = _disk_memo().get(skey)
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        _disk_memo()[skey] = digest
        try:
            _memo_file().parent.mkdir(parents=True, exist_ok=True)
            Journal(_memo_file()).append({"key": skey, "sha256": digest})
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    _MEMO[key] = digest
    return digest


def content_hash(path: str | os.PathLike) -> str:
    """A file's SHA-256, or for a folder the hash of its top-level files' names and hashes."""
    path = Path(path)
    if not path.is_dir():
        return file_hash(path)
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    return sha256_json([[f.name, file_hash(f)] for f in files])


class Journal:
    """Append-only JSONL; `rows()` skips lines cut by a kill, `append()` writes one whole line."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._repaired = False

    def rows(self) -> Iterator[dict]:
        if not self.path or not self.path.is_file():
            return
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue  # a line cut by a kill
            if isinstance(row, dict):
                yield row

    def append(self, row: dict) -> None:
        if not self.path:
            return
        line = (json.dumps(row) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if not self._repaired:  # a line cut by an earlier kill or a full disk is closed so ours stays whole
                self._repaired = True  # (checked once per opening: another writer's line in flight would look cut)
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    line = b"\n" + line
            view = memoryview(line)
            while view:  # os.write may write less than asked (a signal, a nearly full disk): write the rest
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            self._repaired = False  # whatever was cut is closed off before the next line
            raise
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


class StateStore:
    """Chunks of hidden states under cache_dir()/states/<key>/, each checked against its checksum."""

    def __init__(self, key: str, enabled: bool = True):
        self.folder, self.enabled = cache_dir() / "states" / key, enabled

    def get(self, index: int) -> torch.Tensor | None:
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        f = self.folder / f"{index:06d}.safetensors"
        if not self.enabled or not f.is_file():
            return None
        try:
            with safe_open(str(f), "pt") as sf:
                states, digest = sf.get_tensor("states"), (sf.metadata() or {}).get("sha256")
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return None
        return states if digest == _tensor_digest(states) else None

    def put(self, index: int, states: torch.Tensor) -> None:
        from safetensors.torch import save_file

        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        states = states.contiguous()
        meta = {"sha256": _tensor_digest(states)}
        atomic_write(self.folder / f"{index:06d}.safetensors", lambda t: save_file({"states": states}, str(t), meta),
                     force=True)
