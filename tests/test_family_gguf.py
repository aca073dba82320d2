"""The architecture matrix's llama.cpp side: each family's tiny random model (tests/families.py), converted to
GGUF by llama.cpp's own converter (auditor/io/hf_to_gguf.py), gives the same per-layer states on the llama.cpp
backend as on torch, for the same token ids: cosine >= 0.999 at every layer, as the bundled model does.

Tokenizers: the converter reads a SentencePiece `tokenizer.model` for most families, so the test trains a
small one (with the special tokens llama.cpp looks for, such as Phi-3's <|endoftext|>); OLMo-2's converter
reads only a GPT-2-style BPE tokenizer it recognizes, so it gets the bundled model's. The ids are the same on
both sides, so what is compared is the computation, not the tokenizers.

Sequences stay shorter than the families' 16-token sliding window: llama.cpp does not apply Mistral's
window (Mistral-7B-v0.1's 4,096 tokens; later Mistrals have none), which docs/architecture.md says."""

from __future__ import annotations

import json
import shutil

import families
import pytest
import torch

from auditor.backends import open_backend
from auditor.backends.hf_loading import converted_gguf_dir
from auditor.errors import AuditError
from auditor.io.hf_to_gguf import convert_hf_folder
from auditor.io.models import default_model_path, resolve_model

SPECIAL = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"]
LENGTHS = (3, 7, 10, 14)
SCALED = (1, 2)


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
    """A 512-piece SentencePiece BPE model trained on the bundled Alpaca instructions, as an HF tokenizer."""
    import sentencepiece
    from transformers import AutoTokenizer

    from auditor.io.prompts import load_prompts

    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(load_prompts("alpaca-train").prompts))
    sentencepiece.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=512, model_type="bpe",
        byte_fallback=True, character_coverage=0.995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=SPECIAL, num_threads=1, minloglevel=2)
    folder = d / "tokenizer-folder"
    folder.mkdir()
    shutil.copy(d / "tokenizer.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "pad_token": "</s>"}))
    return folder, AutoTokenizer.from_pretrained(folder)


def save_family(family: str, tok, folder, spm_folder=None) -> None:
    """The family's tiny model with `tok` in an HF folder, with the SentencePiece model the converter reads."""
    model = families.build(family, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if spm_folder is not None:
        shutil.copy(spm_folder / "tokenizer.model", folder / "tokenizer.model")


@pytest.fixture(scope="module", params=sorted(families.FAMILIES))
def converted(request, spm_tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    family = request.param
    folder = tmp_path_factory.mktemp(family)
    if family == "olmo2":
        tok = AutoTokenizer.from_pretrained(converted_gguf_dir(default_model_path()))
        save_family(family, tok, folder)
    else:
        spm_folder, tok = spm_tokenizer
        save_family(family, tok, folder, spm_folder)
    gguf = convert_hf_folder(folder, folder.with_name(family + ".gguf"), "f32")
    return family, folder, gguf, len(tok)


def test_llama_cpp_and_torch_give_the_same_states(converted):
    family, folder, gguf, vocab = converted
    g = torch.Generator().manual_seed(0)
    ids = [[1] + torch.randint(3, min(vocab, 512), (n,), generator=g).tolist() for n in LENGTHS]
    hf, llama = open_backend(resolve_model(folder), "torch"), open_backend(resolve_model(gguf), "llama")
    assert llama.n_layers == hf.n_layers == families.SMALL["num_hidden_layers"]
    plain = [hf.states_for_ids(ids), torch.as_tensor(llama.states_for_ids(ids)).float()]
    # a locate count on each: the same maps scaled on both sides (fused, biased, normed alike)
    llama.prepare_scaling()
    with hf.scaled(SCALED, 1.5), llama.scaled(SCALED, 1.5):
        scaled = [hf.states_for_ids(ids), torch.as_tensor(llama.states_for_ids(ids)).float()]
    assert torch.equal(torch.as_tensor(llama.states_for_ids(ids)).float(), plain[1])  # restored exactly
    llama.close()
    for what, (a, b) in (("plain", plain), ("scaled", scaled)):
        cos = torch.nn.functional.cosine_similarity(a.float(), b, dim=-1)
        assert cos.min() >= 0.999, f"{family}, {what}: per-layer min cosine {cos.min(dim=1).values.tolist()}"
    moved = torch.nn.functional.cosine_similarity(plain[0].float(), scaled[0].float(), dim=-1)
    assert moved[SCALED[-1]:].min() < 0.999  # the scaling changed the states it should (else the check is empty)


def test_a_converter_failure_is_one_line_naming_the_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(AuditError) as e:
        convert_hf_folder(tmp_path, tmp_path / "out.gguf", "f16")
    assert "llama.cpp's converter cannot convert this model" in str(e.value) and "\n" not in str(e.value)
    assert str(tmp_path) in str(e.value) and not (tmp_path / "out.gguf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind


def test_the_converter_is_refused_when_it_is_from_another_llama_cpp(tmp_path, monkeypatch):
    import sys

    share = tmp_path / "share" / "llama.cpp-convert"
    share.mkdir(parents=True)
    (share / "convert_hf_to_gguf.py").write_text("")
    (share / "VERSION").write_text("0.0.1\n")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.delenv("SAFETY_AUDIT_LLAMA_CONVERTER", raising=False)
    with pytest.raises(AuditError, match="from llama-cpp-python 0.0.1"):
        convert_hf_folder(tmp_path, tmp_path / "out.gguf")


@pytest.mark.parametrize("family", ["phi3", "qwen2"])  # fused qkv / gate_up; q/k/v biases
def test_harden_writes_a_gguf_of_an_hf_input_that_llama_cpp_reads_as_torch_does(family, spm_tokenizer, tmp_path):
    from click.testing import CliRunner

    from auditor.cli import main

    spm_folder, tok = spm_tokenizer
    src = tmp_path / family
    save_family(family, tok, src, spm_folder)
    out = tmp_path / "hardened"
    r = CliRunner().invoke(main, ["harden", str(src), "--out", str(out), "--layers", "1-2", "--rows", "8", "--max-steps",
                                  "2", "--template", "alpaca", "--lr", "1e-2", "--gguf", "f16", "-q"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "safety_audit.json").read_text())
    assert meta["gguf"] == "model.f16.gguf" and "model.f16.gguf" in meta["files"]
    ids = [[1, 40, 41, 300, 7], [1, 90, 3, 5, 6, 77, 200, 201, 9]]
    trained = open_backend(resolve_model(out), "torch").states_for_ids(ids)
    before = open_backend(resolve_model(src), "torch").states_for_ids(ids)
    llama = open_backend(resolve_model(out / "model.f16.gguf"), "llama")
    exported = torch.as_tensor(llama.states_for_ids(ids)).float()
    llama.close()
    assert not torch.allclose(trained, before, atol=1e-4)  # the GGUF must carry the trained weights, not the input's
    cos = torch.nn.functional.cosine_similarity(trained.float(), exported, dim=-1)
    assert cos.min() >= 0.999, cos.min(dim=1).values.tolist()
