"""Tiny random-weight models of the popular decoder families (transformers' own classes and configs), for the
architecture matrix: the layer selector (test_layers.py) and every command (test_families.py).

Each family's differences that have bitten tools like this one: Phi-3's fused qkv and gate_up projections,
Qwen2's q/k/v biases, Qwen3's and OLMo-2's q/k norms, OLMo-2's and Gemma-2/3's extra (post-)norms, Gemma-2's
soft-capping, Gemma's scaled embeddings, Granite's residual and logit multipliers, Mistral's sliding window."""

from __future__ import annotations

import importlib

import torch

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512)
STANDARD = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj"}

# family -> (config class, model class, extra config, block-relative names of one layer's linear maps)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, STANDARD),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 16}, STANDARD),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, STANDARD),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}, STANDARD),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}, STANDARD),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "sliding_window": 16}, STANDARD),
    # query_pre_attn_scalar = head_dim, as in Gemma-3 1B/4B/12B: llama.cpp takes Gemma-3's attention scale from
    # the model size (27B: hidden/heads, else head_dim), not from this key (Gemma-2 reads it: kept at 256 there)
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "sliding_window": 16,
                                                          "query_pre_attn_scalar": 8}, STANDARD),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 2},
             {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"residual_multiplier": 0.5, "logits_scaling": 2.0}, STANDARD),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, STANDARD),
}


def build(family: str, vocab_size: int = 64, seed: int = 0, **special) -> torch.nn.Module:
    config_name, model_name, extra, _ = FAMILIES[family]
    transformers = importlib.import_module("transformers")
    cfg = getattr(transformers, config_name)(vocab_size=vocab_size, **SMALL, **{**extra, **special})
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(cfg).eval()


def layer_map_names(family: str) -> set[str]:
    return FAMILIES[family][3]
