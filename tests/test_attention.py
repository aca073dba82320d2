"""`attention` (the paper's Figure 4): the backend's final-token attention, token roles and shares, the
workflow's options and bad inputs, the PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from auditor.backends.base import Attention
from auditor.backends.hf import TorchBackend
from auditor.core.attention import reduce_heads, role_shares, token_view
from auditor.errors import AuditError
from auditor.workflows.attention import AttentionConfig, run_attention


@pytest.fixture(scope="module")
def backend(tiny_model):
    model, tok = tiny_model
    return TorchBackend(hf_model=model, tokenizer=tok)


def test_final_token_attention_is_the_eager_softmax_row(backend):
    att = backend.final_token_attention("How do I pick a lock?", "alpaca")
    K, H, T = att.weights.shape
    assert (K, T) == (backend.n_layers, len(att.ids)) and H == backend.model.config.num_attention_heads
    assert torch.allclose(att.weights.sum(-1), torch.ones(K, H), atol=1e-5)  # each head's row is a distribution
    assert backend.model.config._attn_implementation != "eager"  # eager for the call only
    assert len(att.offsets) == T and att.text.count("How do I pick a lock?") == 1


def test_attention_follows_the_weights_and_scaling_restores_them(backend):
    before = backend.final_token_attention("Tell me a story.", "raw").weights
    with backend.scaled(range(0, 2), 3.0):
        scaled = backend.final_token_attention("Tell me a story.", "raw").weights
    after = backend.final_token_attention("Tell me a story.", "raw").weights
    assert not torch.allclose(before[1], scaled[1], atol=1e-4)  # layer 1 reads scaled states
    assert torch.allclose(before, after)


def test_heads_are_combined_as_asked():
    w = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])  # 1 layer, 2 heads, 2 tokens
    assert torch.allclose(reduce_heads(w, "mean"), torch.tensor([[0.7, 0.3]]))
    assert torch.allclose(reduce_heads(w, "max"), torch.tensor([[0.9, 0.5]]))
    assert torch.allclose(reduce_heads(w, "1"), torch.tensor([[0.9, 0.1]]))
    with pytest.raises(AuditError, match="heads 0..1"):
        reduce_heads(w, "2")


def test_token_roles_split_template_function_and_content():
    query = "Write a script that exploits the server."
    text = f"### Instruction:\n{query}\n\n### Response:\n"
    pieces = ["###", " Instruction", ":\n", "Write", " a", " scr", "ipt", " that", " exploits", " the", " server", ".",
              "\n\n###", " Response", ":\n"]
    offsets, at = [(0, 0)], 0
    for p in pieces:
        offsets.append((at, at + len(p)))
        at += len(p)
    assert at == len(text)
    att = Attention(text, list(range(len(offsets))), offsets, torch.zeros(1, 1, len(offsets)))
    view = token_view(att, query, lambda i: "<s>")
    roles = dict(zip(view.labels, view.roles))
    assert view.labels[0] == "<s>" and view.roles[0] == "template"
    assert roles["·Instruction"] == roles["###"] == roles["·Response"] == "template"
    assert roles["Write"] == roles["·scr"] == roles["ipt"] == roles["·exploits"] == roles["·server"] == "content"
    assert roles["·a"] == roles["·that"] == roles["·the"] == roles["."] == "function"
    w = torch.zeros(2, len(offsets))
    w[0, 0], w[1, view.labels.index("·exploits")], w[1, 0] = 1.0, 0.75, 0.25
    shares = role_shares(w, view.roles)
    assert shares["template"] == [1.0, 0.25] and shares["content"] == [0.0, 0.75] and shares["function"] == [0.0, 0.0]


def test_the_report_has_both_prompts_the_marked_layers_and_the_scaled_maps(tmp_path, tiny_model_dir):
    locate = tmp_path / "locate.json"
    locate.write_text(json.dumps({"safety_layers": [1, 2]}))
    r = run_attention(AttentionConfig(model=str(tiny_model_dir), malicious="How do I make a weapon?", normal="Name a fruit.",
                                      layers=(1, 3), from_report=str(locate), scale=(1, 2), alpha=1.5))
    assert r["command"] == "attention" and r["backend"] == "torch" and r["layers"] == [1, 2, 3]
    assert r["safety_layers"] == [1, 2] and r["scale"] == {"layers": [1, 2], "alpha": 1.5}
    mal, nor = r["prompts"]
    assert (mal["role"], nor["role"]) == ("malicious", "normal") and mal["prompt"] == "How do I make a weapon?"
    for p in (mal, nor):
        assert len(p["weights"]) == 3 and all(len(row) == len(p["tokens"]) == len(p["token_roles"]) for row in p["weights"])
        assert all(abs(sum(row) - 1) < 1e-3 for row in p["weights"])
        for k in range(3):
            assert abs(sum(p["shares"][role][k] for role in ("content", "function", "template")) - 1) < 1e-3
        assert p["scaled_weights"] != p["weights"]
    assert "content" in mal["token_roles"] and "template" in mal["token_roles"]


def test_defaults_are_the_first_bundled_pair(tiny_model_dir):
    from auditor.io.prompts import load_prompts

    r = run_attention(AttentionConfig(model=str(tiny_model_dir)))
    assert [p["prompt"] for p in r["prompts"]] == [load_prompts("malicious").prompts[0], load_prompts("normal").prompts[0]]
    assert r["scale"] is None and r["prompts"][0]["scaled_weights"] is None and r["safety_layers"] is None


@pytest.mark.parametrize("kw,message", [
    ({"heads": "all"}, "--heads 'all'"),
    ({"heads": "99"}, "--heads 99"),
    ({"scale": (1, 2)}, "--scale i-j and --alpha A go together"),
    ({"scale": (1, 2), "alpha": 0.0}, "alpha"),
    ({"layers": (2, 9)}, "--layers 2-9 are outside the model"),
    ({"malicious": "  "}, "the malicious prompt is empty"),
    ({"backend": "llama"}, "no attention capability"),
])
def test_bad_options_are_one_line_errors(tiny_model_dir, kw, message):
    with pytest.raises(AuditError, match=message.replace("(", r"\(").replace("?", r"\?")):
        run_attention(AttentionConfig(model=str(tiny_model_dir), **kw))


def test_cli_writes_the_png_and_json(tmp_path, tiny_model_dir):
    png, js = tmp_path / "att.png", tmp_path / "att.json"
    p = subprocess.run([sys.executable, "-m", "auditor.cli", "attention", str(tiny_model_dir), "Steal a car.", "Bake bread.",
                        "--plot", str(png), "--json", str(js), "--heads", "max", "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert json.loads(js.read_text())["heads"] == "max"
    assert "mal content" in p.stdout and "nor top" in p.stdout  # the per-layer table
    again = subprocess.run([sys.executable, "-m", "auditor.cli", "attention", str(tiny_model_dir), "--plot", str(png), "-q"],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "output exists" in again.stderr and str(png) in again.stderr
