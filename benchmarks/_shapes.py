"""Random-weight models with the shapes of real open-weight models, for measuring memory and time at sizes
this machine cannot download. The weights are random (seeded), the shapes, dtypes and tokenizer real: what a
command holds in memory and how long a forward pass takes depend on the shapes, not on what the weights learned.

The tokenizer is the bundled SmolLM2's (49,152 tokens); a shape's vocabulary is set to it so every prompt
tokenizes, and its embedding matrix is sized accordingly (its real vocabulary is recorded beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

SHAPES = {  # name -> (hidden, intermediate, layers, heads, kv heads, real vocabulary, tied embeddings)
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, True),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 49152, True),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 128256, True),
    "llama-3.2-3b": (3072, 8192, 28, 24, 8, 128256, True),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128256, False),
}


def build_random_model(shape: str, out: Path, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """An HF folder (config, safetensors, the bundled tokenizer) of a random-weight Llama-family model of `shape`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from auditor.backends.hf_loading import converted_gguf_dir
    from auditor.io.models import resolve_model

    if (out / "config.json").exists():
        return out
    hidden, inter, layers, heads, kv, real_vocab, tied = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(converted_gguf_dir(resolve_model(None).path))
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=len(tok), tie_word_embeddings=tied, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, torch_dtype=dtype)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    for p in model.parameters():  # small random weights: activations stay finite through every layer
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "shape.json").write_text(json.dumps({"shape": shape, "real_vocabulary": real_vocab, "random_weights_seed": seed,
                                                "parameters": sum(p.numel() for p in model.parameters())}))
    return out


def parameters(shape: str, vocab: int = 49152) -> int:
    """Parameters of a shape with our vocabulary (embeddings tied where the real model ties them)."""
    hidden, inter, layers, heads, kv, _, tied = SHAPES[shape]
    head_dim = hidden // heads
    attn = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden
    block = attn + 3 * hidden * inter + 2 * hidden
    return layers * block + vocab * hidden * (1 if tied else 2) + hidden


def build_random_gguf(shape: str, out: Path, qtype: str = "f16", seed: int = 0) -> Path:
    """A llama-architecture GGUF of `shape` with random weights (std 0.02; norms 1) in F16 or Q8_0, and the
    bundled model's tokenizer and chat template (copied from its GGUF), for llama.cpp's side of the cost model."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants

    from auditor.io.models import resolve_model

    if out.exists():
        return out
    hidden, inter, layers, heads, kv, real_vocab, tied = SHAPES[shape]
    reader = GGUFReader(resolve_model(None).path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    w = GGUFWriter(tmp, "llama")
    dims = {"llama.block_count": layers, "llama.embedding_length": hidden, "llama.feed_forward_length": inter,
            "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv,
            "llama.rope.dimension_count": hidden // heads, "general.file_type": 1 if qtype == "f16" else 7}
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == "general.architecture" or name in dims:
            continue
        if name.startswith("general.") and name not in ("general.quantization_version",):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for name, value in dims.items():
        w.add_key_value(name, value, GGUFValueType.UINT32)
    w.add_key_value("general.name", f"random {shape}", GGUFValueType.STRING)
    rng = np.random.default_rng(seed)
    vocab = int(reader.fields["llama.vocab_size"].contents())
    head_dim = hidden // heads
    qt = GGMLQuantizationType.F16 if qtype == "f16" else GGMLQuantizationType.Q8_0

    def matrix(name: str, rows: int, cols: int) -> None:
        x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        if qt == GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, quants.quantize(x, qt), raw_dtype=qt)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(hidden, dtype=np.float32))

    matrix("token_embd.weight", vocab, hidden)
    for k in range(layers):
        norm(f"blk.{k}.attn_norm.weight")
        matrix(f"blk.{k}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"blk.{k}.attn_k.weight", kv * head_dim, hidden)
        matrix(f"blk.{k}.attn_v.weight", kv * head_dim, hidden)
        matrix(f"blk.{k}.attn_output.weight", hidden, heads * head_dim)
        norm(f"blk.{k}.ffn_norm.weight")
        matrix(f"blk.{k}.ffn_gate.weight", inter, hidden)
        matrix(f"blk.{k}.ffn_up.weight", inter, hidden)
        matrix(f"blk.{k}.ffn_down.weight", hidden, inter)
    norm("output_norm.weight")
    if not tied:
        matrix("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)
    return out
