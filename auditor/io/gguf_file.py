"""A fast, read-only, bounded GGUF header parser.

gguf-py's GGUFReader builds a numpy view of every metadata array element (4.2 s on the 98 MB SmolLM2
file, mostly the tokenizer vocab); we need only scalars, short strings and the tensor table, so this
parser skips arrays by length (~40 ms). Types and block sizes come from gguf-py's constants.

A GGUF file is untrusted input: the parser reads through a read-only memory map (only the pages it touches
are read, never the whole file), checks every declared length and count against the bytes that remain
before it reads or skips, bounds the nesting of arrays, and turns every malformed field, a duplicate tensor
name or two tensors over the same bytes into one AuditError naming the file.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import AuditError

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
MAX_ARRAY_DEPTH = 2  # GGUF files nest arrays at most once in practice; llama.cpp reads none nested
MAX_KEPT_STRING = 1 << 20  # longer metadata strings are recorded by length only (chat templates are ~10 KB)
MAX_NAME = 256  # a tensor name or key longer than this is not a model's (ggml's own limit is 64)
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] (fastest) first
    type: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    n_bytes: int


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict = field(default_factory=dict)  # scalars and strings; arrays (and huge strings) as (kind, length)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    @property
    def n_layers(self) -> int | None:
        v = self.metadata.get(f"{self.architecture}.block_count")
        return int(v) if v is not None else None


class _Cursor:
    """Reads little-endian values from the map; any length past the end of the file is an error at once."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str) -> AuditError:
        return AuditError(f"truncated GGUF header or a corrupt length ({what} at byte {self.pos})", self.path)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} of {n} bytes runs past the end of the file")

    def take(self, fmt: str, what: str = "a value"):
        size = struct.calcsize("<" + fmt)
        self.need(size, what)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self, what: str, keep: int = MAX_KEPT_STRING) -> str | tuple:
        n = self.take("Q", f"the length of {what}")
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        if n > keep:
            return ("string", n)
        return bytes(self.buf[start:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string("a string")
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise AuditError(f"corrupt GGUF metadata (arrays nested deeper than {MAX_ARRAY_DEPTH} levels)", self.path)
            etype, count = self.take("I", "an array type"), self.take("Q", "an array length")
            if etype in _SCALAR:
                self.need(count * struct.calcsize("<" + _SCALAR[etype]), f"an array of {count} values")
                self.pos += count * struct.calcsize("<" + _SCALAR[etype])
            elif etype == _STRING:  # hot path (tokenizer vocab): skip by length without decoding
                self.need(count * 8, f"an array of {count} strings")  # each string has at least its 8-byte length
                buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
                for _ in range(count):
                    if pos + 8 > size:
                        self.pos = pos
                        raise self.fail("a string length runs past the end of the file")
                    pos += 8 + unpack("<Q", buf, pos)[0]
                    if pos > size:
                        self.pos = pos
                        raise self.fail("a string in an array runs past the end of the file")
                self.pos = pos
            elif etype == _ARRAY:
                self.need(count * 12, f"an array of {count} arrays")
                for _ in range(count):
                    self.value(etype, depth + 1)
            else:
                raise AuditError(f"corrupt GGUF metadata (array element type {etype})", self.path)
            return ("array", count)
        raise AuditError(f"corrupt GGUF metadata (value type {vtype})", self.path)


def read_gguf(path: str | Path) -> GGUFInfo:
    """Parse the header and tensor table; raise AuditError for non-GGUF, corrupt or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise AuditError("model file not found", path)
    size = path.stat().st_size
    if size < 24:
        raise AuditError("not a GGUF file (too small)", path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise AuditError("not a GGUF file (bad magic)", path)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, size)


def _checked_int(info: GGUFInfo, key: str, path: Path, default: int | None = None) -> int | None:
    v = info.metadata.get(key, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise AuditError(f"GGUF metadata {key} is not an integer (got {_shown(v)})", path)
    return v


def _shown(v) -> str:
    if isinstance(v, tuple):
        return f"an array of {v[1]} values" if v[0] == "array" else f"a string of {v[1]} bytes"
    return repr(v)[:40]


def _parse(path: Path, buf, size: int) -> GGUFInfo:
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.take("I")
    if version not in (2, 3):
        raise AuditError(f"unsupported GGUF version {version}", path)
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    if n_kv * 13 > size or n_tensors * 24 > size:  # the smallest entry of each takes that many bytes
        raise cur.fail(f"the header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file holds")
    info = GGUFInfo(path, version)
    for _ in range(n_kv):
        key = cur.string("a metadata key", keep=MAX_NAME)
        if isinstance(key, tuple):
            raise cur.fail(f"a metadata key of {key[1]} bytes")
        if key in info.metadata:
            raise AuditError(f"GGUF metadata key '{key}' appears twice", path)
        info.metadata[key] = cur.value(cur.take("I", "a value type"))
    raw, names = [], set()
    for _ in range(n_tensors):
        name = cur.string("a tensor name", keep=MAX_NAME)
        if isinstance(name, tuple):
            raise cur.fail(f"a tensor name of {name[1]} bytes")
        if name in names:
            raise AuditError(f"GGUF tensor '{name}' appears twice", path)
        names.add(name)
        ndim = cur.take("I", "a dimension count")
        if not 1 <= ndim <= MAX_DIMS:
            raise AuditError(f"GGUF tensor '{name}' has {ndim} dimensions (1 to {MAX_DIMS} allowed)", path)
        shape = tuple(cur.take("Q", "a dimension") for _ in range(ndim))
        ttype, off = cur.take("I", "a tensor type"), cur.take("Q", "a tensor offset")
        raw.append((name, shape, ttype, off))
    _check_metadata(info, path)
    align = _checked_int(info, "general.alignment", path, 32)
    if align <= 0 or align & (align - 1):
        raise AuditError(f"GGUF metadata general.alignment must be a power of two (got {align})", path)
    data_start = (cur.pos + align - 1) // align * align
    for name, shape, ttype, off in raw:
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise AuditError(f"GGUF tensor '{name}' has unknown type {ttype}", path) from None
        if shape[0] % block:
            raise AuditError(f"GGUF tensor '{name}': a row of {shape[0]} is not whole blocks of {block} ({qtype.name})", path)
        if off % align:
            raise AuditError(f"GGUF tensor '{name}' starts at offset {off}, not a multiple of the alignment {align}", path)
        n_el = math.prod(shape)  # Python ints: a hostile shape cannot wrap around int64 and look small
        t = TensorInfo(name, shape, qtype, data_start + off, n_el // block * type_size)
        if t.offset + t.n_bytes > size:
            raise AuditError("truncated GGUF file (tensor data ends past the end of the file)", path)
        info.tensors[name] = t
    _check_overlaps(info, path)
    claimed = info.n_layers
    if claimed is not None and not 0 < claimed <= max(len(info.tensors), 1):  # every layer has tensors of its own
        raise AuditError(f"GGUF metadata claims {claimed} layers but the file holds {len(info.tensors)} tensors", path)
    return info


def _check_metadata(info: GGUFInfo, path: Path) -> None:
    """The fields the product acts on have the types the format says; anything else is a corrupt file."""
    arch = info.metadata.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise AuditError(f"GGUF metadata general.architecture is not a string (got {_shown(arch)})", path)
    _checked_int(info, f"{info.architecture}.block_count", path)
    template = info.metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise AuditError(f"GGUF metadata tokenizer.chat_template is not a string (got {_shown(template)})", path)


def _check_overlaps(info: GGUFInfo, path: Path) -> None:
    """Two tensors over the same bytes would be scaled twice by scale_gguf (and are no model llama.cpp wrote)."""
    spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in info.tensors.values() if t.n_bytes)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise AuditError(f"GGUF tensors '{a}' and '{b}' overlap in the file", path)
