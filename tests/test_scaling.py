"""Layer weight scaling: torch in place with exact restore; GGUF copies patched block by block."""

import hashlib

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFReader, GGUFWriter
from gguf.quants import dequantize

from auditor.ops import compiled as _ext
from auditor.errors import AuditError
from auditor.weights.gguf_scaling import BLOCK_SCALE_OFFSETS, scale_gguf
from auditor.weights.scaling import scalable_parameters, scale_, scaled


def weights_hash(model):
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode() + p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_scaled_context_scales_linear_maps_and_restores_bit_exactly(tiny_model):
    model, _ = tiny_model
    before = weights_hash(model)
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    with scaled(model, [1, 2], 1.1) as names:
        assert len(names) == 2 * 7  # q k v o gate up down
        for n, p in model.named_parameters():
            if (".layers.1." in n or ".layers.2." in n) and "proj" in n:
                torch.testing.assert_close(p, ref[n] * 1.1, rtol=1.2e-7, atol=0)
            else:  # norms, embeddings, lm_head and other layers untouched
                assert torch.equal(p, ref[n]), n
        assert weights_hash(model) != before
    assert weights_hash(model) == before


def test_restore_is_exact_even_when_the_body_raises(tiny_model):
    model, _ = tiny_model
    before = weights_hash(model)
    with pytest.raises(RuntimeError):
        with scaled(model, [0], 0.8123):
            raise RuntimeError("boom")
    assert weights_hash(model) == before


def test_paper_compat_leaves_o_proj_alone(tiny_model):
    names = [n for n, _ in scalable_parameters(tiny_model[0], [0], scale_o_proj=False)]
    assert len(names) == 6 and not any("o_proj" in n for n in names)


@pytest.mark.parametrize("bad,match", [(([9], 1.1), "outside the model"), (([0], 0.0), "positive"),
                                       (([0], -1.0), "positive"), (([], 1.1), "no layers")])
def test_bad_scaling_arguments(tiny_model, bad, match):
    with pytest.raises(AuditError, match=match):
        with scaled(tiny_model[0], *bad):
            pass


@pytest.mark.skipif(not _ext.load(), reason="compiled core unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_compiled_multi_tensor_scale_matches_torch(dtype):
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(s, generator=g).to(dtype) for s in ((3, 5), (70_001,), (257, 513), (1,))]
    want = [t * 0.9 for t in ts]
    assert scale_(ts, 0.9) == "compiled"
    for a, b in zip(ts, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0) if dtype != torch.float64 else torch.testing.assert_close(a, b)


# -- GGUF ---------------------------------------------------------------------------------------------
def random_blocks(qtype, n_blocks, rng):
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    data = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in BLOCK_SCALE_OFFSETS[qtype]:  # finite, moderate fp16 scales and mins
        data[:, off : off + 2] = rng.uniform(-0.05, 0.05, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)
    return data


def make_gguf(path, types, rng):
    """A 2-layer llama-arch GGUF whose layer tensors use the given quant types (raw random blocks)."""
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 256)).astype(np.float32))
    for k in range(2):
        w.add_tensor(f"blk.{k}.attn_norm.weight", np.ones(256, dtype=np.float32))
        for i, (name, qt) in enumerate(zip(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), types)):
            if qt in (Q.F32, Q.F16):
                arr = rng.standard_normal((4, 256)).astype(np.float32 if qt == Q.F32 else np.float16)
                w.add_tensor(f"blk.{k}.{name}.weight", arr)
            else:
                blocks = random_blocks(qt, 4 * 256 // GGML_QUANT_SIZES[qt][0], rng)
                w.add_tensor(f"blk.{k}.{name}.weight", blocks.reshape(4, -1), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensors(path):
    return {t.name: (t.tensor_type, np.array(t.data)) for t in GGUFReader(str(path)).tensors}


TYPE_SETS = [
    [Q.Q4_0, Q.Q5_0, Q.Q8_0, Q.Q4_1, Q.Q5_1, Q.F16, Q.F32],
    [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q3_K, Q.Q2_K, Q.Q8_0, Q.Q4_K],
]


@pytest.mark.parametrize("types", TYPE_SETS, ids=["legacy+float", "k-quants"])
def test_scale_gguf_dequantizes_to_alpha_times_w(tmp_path, types):
    rng = np.random.default_rng(0)
    src, dst = tmp_path / "m.gguf", tmp_path / "scaled.gguf"
    make_gguf(src, types, rng)
    src_hash = hashlib.sha256(src.read_bytes()).hexdigest()
    names = scale_gguf(src, dst, [1], 1.15)
    assert len(names) == 7 and all(n.startswith("blk.1.") for n in names)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == src_hash  # source untouched
    a, b = tensors(src), tensors(dst)
    for name, (qt, raw) in a.items():
        if name in names:
            w0 = dequantize(raw, qt).astype(np.float64)
            w1 = dequantize(b[name][1], qt).astype(np.float64)
            err = np.abs(w1 - 1.15 * w0).max() / np.abs(1.15 * w0).max()
            assert err < 1e-3, (name, qt.name, err)
            assert not np.array_equal(raw, b[name][1])
        else:
            assert np.array_equal(raw, b[name][1]), name  # everything else byte-identical


def test_scale_gguf_refuses_overwrite_and_bad_types(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "m.gguf"
    make_gguf(src, TYPE_SETS[0], rng)
    dst = tmp_path / "out.gguf"
    dst.write_text("keep me")
    with pytest.raises(AuditError, match="exists"):
        scale_gguf(src, dst, [0], 1.1)
    assert dst.read_text() == "keep me"
    with pytest.raises(AuditError, match="outside the model"):
        scale_gguf(src, tmp_path / "x.gguf", [2], 1.1)
    iq = tmp_path / "iq.gguf"
    w = GGUFWriter(str(iq), "llama")
    w.add_block_count(1)
    qt = Q.IQ4_NL
    w.add_tensor("blk.0.attn_q.weight", np.zeros((1, GGML_QUANT_SIZES[qt][1]), np.uint8), raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(AuditError, match="IQ4_NL is not supported"):
        scale_gguf(iq, tmp_path / "y.gguf", [0], 1.1)
    assert not (tmp_path / "y.gguf").exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.model
def test_scaled_bundled_gguf_changes_only_chosen_layers(tmp_path, bundled_gguf):
    from auditor.io.gguf_file import read_gguf

    dst = tmp_path / "s.gguf"
    names = scale_gguf(bundled_gguf, dst, range(8, 15), 1.1, scale_o_proj=False)
    assert len(names) == 7 * 6
    info = read_gguf(bundled_gguf)
    a, b = np.memmap(bundled_gguf, np.uint8, mode="r"), np.memmap(dst, np.uint8, mode="r")
    changed = {t.name for t in info.tensors.values()
               if not np.array_equal(a[t.offset : t.offset + t.n_bytes], b[t.offset : t.offset + t.n_bytes])}
    assert changed == set(names)
    first = info.tensors["blk.0.attn_q.weight"].offset
    assert np.array_equal(a[:first], b[:first])  # header and metadata identical


@pytest.mark.parametrize("qtype,values,alpha", [("F16", 60000.0, 1.2), ("F16", 1000.0, 100.0), ("BF16", 3e38, 1.5),
                                                ("Q8_0", 60000.0 * 127, 1.5)])
def test_scaling_that_would_overflow_the_stored_type_writes_nothing(tmp_path, qtype, values, alpha):
    """A large alpha on F16 weights (or fp16 block scales) would write inf into the model: refused before the copy."""
    from gguf import quants

    src = tmp_path / "m.gguf"
    w = GGUFWriter(str(src), "llama")
    w.add_block_count(1)
    data = np.full((4, 32), values, np.float32)
    q = Q[qtype]
    w.add_tensor("blk.0.attn_q.weight", quants.quantize(data, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    before = src.read_bytes()
    with pytest.raises(AuditError, match=f"alpha {alpha:g} overflows .*'blk.0.attn_q.weight'") as e:
        scale_gguf(src, tmp_path / "out.gguf", [0], alpha)
    assert str(src) in str(e.value)
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    scale_gguf(src, tmp_path / "ok.gguf", [0], 0.5)  # the other direction always fits
