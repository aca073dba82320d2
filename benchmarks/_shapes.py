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
