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
