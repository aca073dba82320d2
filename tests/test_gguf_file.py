import shutil

import pytest

from auditor.errors import AuditError
from auditor.io.gguf_file import read_gguf
from auditor.io.models import resolve_model


def test_bundled_gguf_header(bundled_gguf):
    info = read_gguf(bundled_gguf)
    assert info.architecture == "llama" and info.n_layers == 30
    assert info.metadata["llama.embedding_length"] == 576
    assert "blk.29.ffn_down.weight" in info.tensors
    last = max(info.tensors.values(), key=lambda t: t.offset)
    assert last.offset + last.n_bytes <= bundled_gguf.stat().st_size


def test_truncated_and_foreign_files(tmp_path, bundled_gguf):
    cut = tmp_path / "cut.gguf"
    with open(bundled_gguf, "rb") as f:
        cut.write_bytes(f.read(50_000_000))
    with pytest.raises(AuditError, match="truncated GGUF file"):
        read_gguf(cut)
    head = tmp_path / "head.gguf"
    with open(bundled_gguf, "rb") as f:
        head.write_bytes(f.read(1000))
    with pytest.raises(AuditError, match="truncated GGUF header"):
        read_gguf(head)
    txt = tmp_path / "model.gguf"
    txt.write_text("this is not a model, just some text " * 3)
    with pytest.raises(AuditError, match="bad magic") as e:
        resolve_model(txt)
    assert str(txt) in str(e.value)


def test_model_folder_checks(tmp_path, tiny_model_dir):
    assert resolve_model(tiny_model_dir).kind == "hf"
    with pytest.raises(AuditError, match="no config.json"):
        resolve_model(tmp_path)
    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(AuditError, match="no .safetensors"):
        resolve_model(d)
    with pytest.raises(AuditError, match="model not found"):
        resolve_model(tmp_path / "missing.gguf")


def test_unknown_architecture_is_a_clear_error(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    from auditor.backends import open_backend

    p = tmp_path / "alien.gguf"
    w = GGUFWriter(str(p), "alienformer")
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_q.weight", np.ones((4, 4), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    model = resolve_model(p)  # a valid GGUF container ...
    with pytest.raises(AuditError, match="architecture: 'alienformer'") as e:
        open_backend(model, "llama")  # ... that llama.cpp cannot run
    assert str(p) in str(e.value)


# -- hostile headers: every declared length checked, every malformed field one line ---------------------------
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


def _s(x) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


ARCH = _kv("general.architecture", 8, _s("llama"))
LAYERS = _kv("llama.block_count", 4, struct.pack("<I", 1))
F32_4x4 = ("blk.0.attn_q.weight", (4, 4), 0, 0)


def raw_gguf(path, kvs=(ARCH, LAYERS), tensors=(F32_4x4,), data: int = 64, n_kv=None, n_tensors=None):
    """A GGUF written byte by byte, so that any field can lie."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    out += b"".join(kvs)
    for name, shape, ttype, off in tensors:
        out += _s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, off)
    out += bytes(-len(out) % 32) + bytes(data)
    path.write_bytes(out)
    return path


def _nested(depth: int) -> bytes:
    return struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQ", 4, 0)


HOSTILE = {
    "alignment zero": ([ARCH, LAYERS, _kv("general.alignment", 4, struct.pack("<I", 0))], None, "alignment must be a power of two"),
    "alignment negative": ([ARCH, LAYERS, _kv("general.alignment", 5, struct.pack("<i", -32))], None, "alignment must be a power of two"),
    "alignment not a power of two": ([ARCH, LAYERS, _kv("general.alignment", 4, struct.pack("<I", 24))], None, "power of two"),
    "alignment a string": ([ARCH, LAYERS, _kv("general.alignment", 8, _s("32"))], None, "alignment is not an integer"),
    "alignment an array": ([ARCH, LAYERS, _kv("general.alignment", 9, struct.pack("<IQ", 4, 1) + struct.pack("<I", 32))], None,
                           "alignment is not an integer (got an array of 1 values)"),
    "alignment a bool": ([ARCH, LAYERS, _kv("general.alignment", 7, b"\x01")], None, "not an integer"),
    "block_count a string": ([ARCH, _kv("llama.block_count", 8, _s("thirty"))], None, "block_count is not an integer"),
    "block_count a float": ([ARCH, _kv("llama.block_count", 6, struct.pack("<f", 30.0))], None, "block_count is not an integer"),
    "architecture a number": ([_kv("general.architecture", 4, struct.pack("<I", 7)), LAYERS], None, "architecture is not a string"),
    "chat template an array": ([ARCH, LAYERS, _kv("tokenizer.chat_template", 9, struct.pack("<IQ", 4, 0))], None,
                               "chat_template is not a string"),
    "arrays nested 1000 deep": ([ARCH, LAYERS, _kv("x.nested", 9, _nested(1000))], None, "nested deeper"),
    "string length 2^60": ([ARCH, LAYERS, _kv("x.s", 8, struct.pack("<Q", 1 << 60))], None, "runs past the end of the file"),
    "array of 2^62 bytes": ([ARCH, LAYERS, _kv("x.a", 9, struct.pack("<IQ", 0, 1 << 62))], None, "runs past the end of the file"),
    "array of 2^40 strings": ([ARCH, LAYERS, _kv("x.a", 9, struct.pack("<IQ", 8, 1 << 40))], None, "runs past the end of the file"),
    "array of an unknown type": ([ARCH, LAYERS, _kv("x.a", 9, struct.pack("<IQ", 77, 1))], None, "array element type 77"),
    "duplicate key": ([ARCH, LAYERS, LAYERS], None, "appears twice"),
    "duplicate tensor": (None, [F32_4x4, ("blk.0.attn_q.weight", (4, 4), 0, 64)], "'blk.0.attn_q.weight' appears twice"),
    "overlapping tensors": (None, [F32_4x4, ("blk.0.attn_k.weight", (4, 4), 0, 32)], "overlap"),
    "unaligned tensor": (None, [("blk.0.attn_q.weight", (4, 4), 0, 4)], "not a multiple of the alignment"),
    "zero dimensions": (None, [("blk.0.attn_q.weight", (), 0, 0)], "0 dimensions"),
    "a hundred dimensions": (None, [("blk.0.attn_q.weight", (1,) * 100, 0, 0)], "100 dimensions"),
    "partial quant block": (None, [("blk.0.attn_q.weight", (20, 4), 2, 0)], "not whole blocks of 32"),
    "tensor name 1 MB": (None, [("n" * (1 << 20), (4, 4), 0, 0)], "a tensor name of 1048576 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_header_is_one_clear_error(tmp_path, case):
    kvs, tensors, message = HOSTILE[case]
    p = raw_gguf(tmp_path / "h.gguf", **({"kvs": kvs} if kvs else {}), **({"tensors": tensors} if tensors else {}),
                 data=1 << 21 if "name" in case else 256)
    with pytest.raises(AuditError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_gguf(p)
    assert str(p) in str(e.value)


def test_counts_larger_than_the_file_are_refused_before_any_loop(tmp_path):
    p = raw_gguf(tmp_path / "c.gguf", n_kv=1 << 62)
    with pytest.raises(AuditError, match="more than the file holds"):
        read_gguf(p)


def test_a_declared_length_past_the_end_reads_no_more_than_the_header(tmp_path):
    """A 6 GB (sparse) model whose first string claims 2^60 bytes: the old reader grew its buffer x4 until it
    held the whole file before saying 'truncated'. Run in a child whose heap is capped at 3 GB."""
    p = raw_gguf(tmp_path / "big.gguf", kvs=[_kv("x.s", 8, struct.pack("<Q", 1 << 60)), ARCH, LAYERS])
    with open(p, "r+b") as f:
        f.truncate(6 << 30)
    code = ("import resource, sys\n"
            "from auditor.io.gguf_file import read_gguf\n"
            "from auditor.errors import AuditError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    read_gguf(sys.argv[1])\nexcept AuditError as e:\n    print(e)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))"  # a read map is not data
    r = subprocess.run([sys.executable, "-c", f"{limit}\n{code}", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-500:]
    message, grown_kb = r.stdout.strip().splitlines()
    assert "runs past the end of the file" in message and str(p) in message
    assert int(grown_kb) < 50_000, f"the peak RSS grew by {int(grown_kb) >> 10} MB"
