"""Shared fixtures: a tiny random Llama model with a byte-level tokenizer, built in-process (no hub)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"] + sorted(byte_vocab))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    from tokenizers.processors import TemplateProcessing

    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_model(n_layers: int = 4, hidden: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model) -> Path:
    model, tok = tiny_model
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache(tmp_path_factory):
    """One fresh cache per test run: never the user's, shared so the GGUF->torch conversion runs once."""
    os.environ["SAFETY_AUDIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    from auditor.io.models import default_model_path

    return default_model_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(model: Path, n_ctx: int = 4096):
    """A real llama_cpp.server for `model` on 127.0.0.1 (a free port): yields (base URL, process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited: " + proc.stderr.read().decode()[-500:])
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not come up in 120 s")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_planted_model(n_layers: int = 10, block: tuple[int, int] = (4, 6), n_words: int = 60, seed: int = 0):
    """A tiny Llama whose refusals ("Sorry" as the first response token, else "Sure") are driven by the
    layers in `block` only: attention writes nothing anywhere, MLPs outside the block write nothing, and
    each block MLP adds a non-negative, token-dependent amount to a 'refusal' channel (dim 1) that grows
    when the layer is scaled by α > 1. The lm_head compares that channel with a constant one (dim 0).
    Returns (model, tokenizer, prompts); the raw template keeps the varying last word last."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(n_words)]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "Sorry", "Sure"] + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    d = 16
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=d, intermediate_size=16, num_hidden_layers=n_layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    g = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.copy_(0.3 * torch.randn(emb.shape, generator=g))
        emb[:, 0] = 1.0  # constant channel
        emb[:, 1] = 0.25 * torch.randn(emb.shape[0], generator=g)  # refusal channel: token-dependent start
        emb[vocab["Sorry"], 1] = emb[vocab["Sure"], 1] = -10.0  # after the first response token: "Sure"
        for k, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.zero_()
            mlp = layer.mlp
            if block[0] <= k <= block[1]:
                w = torch.randn(mlp.gate_proj.weight.shape, generator=g)
                w[:, :2] = 0  # read the token's identity, not the two channels
                mlp.gate_proj.weight.copy_(w)
                mlp.up_proj.weight.copy_(w)  # silu(z)·z = z²σ(z) ≥ 0: the block only ever adds
                mlp.down_proj.weight.zero_()
                mlp.down_proj.weight[1] = 0.02 * torch.rand(mlp.down_proj.weight.shape[1], generator=g)
            else:
                mlp.down_proj.weight.zero_()
        head = model.lm_head.weight
        head.zero_()
        prompts = [f"{words[(3 * i) % n_words]} {words[(7 * i + 1) % n_words]} {words[i]}" for i in range(n_words)]
        # threshold: about a third of the prompts refuse unscaled
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        h = torch.stack([model.model(torch.tensor([x])).last_hidden_state[0, -1] for x in ids])
        ratio = h[:, 1] / h[:, 0]
        tau = float(ratio.quantile(0.67))
        head[vocab["Sorry"], 1] = 40.0
        head[vocab["Sure"], 0] = 40.0 * tau
    return model, tok, prompts


PLANTED_BLOCK = (4, 6)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """The planted-block model saved as an HF folder, its D_o prompts file, and (model, tokenizer, prompts)."""
    model, tok, prompts = make_planted_model(block=PLANTED_BLOCK)
    d = tmp_path_factory.mktemp("planted")
    model.save_pretrained(d / "model", safe_serialization=True)
    tok.save_pretrained(d / "model")
    return d / "model", write_lines(d / "d_o.txt", prompts), (model, tok, prompts)
