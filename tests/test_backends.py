"""torch backend on a tiny in-process model: hook states, padding invariance, templates."""

import pytest
import torch

from auditor.backends.hf import TorchBackend

from auditor.weights.layers import decoder_layers
from auditor.errors import AuditError
from auditor.io.models import ModelRef

QUERIES = ["hi", "Give three tips for staying healthy.", "How do I pick a lock? Explain in detail please.", "x y"]


@pytest.fixture(scope="module")
def backend(tiny_model):
    model, tok = tiny_model
    return TorchBackend(hf_model=model, tokenizer=tok)


def test_states_are_raw_layer_outputs_at_final_token(backend):
    ids = backend.encode(QUERIES[1], "alpaca")
    states = backend.states_for_ids([ids])
    with torch.no_grad():
        out = backend.model(torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states  # entry 0 = embeddings; the last entry is after the final norm
    K = backend.n_layers
    assert states.shape == (K, 1, backend.hidden_size)
    for k in range(K - 1):
        torch.testing.assert_close(states[k, 0], hs[k + 1][0, -1], atol=1e-5, rtol=1e-5)
    normed = backend.model.model.norm(states[K - 1, 0])
    torch.testing.assert_close(normed, hs[K][0, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(states[K - 1, 0], hs[K][0, -1], atol=1e-3)


def test_padding_does_not_change_states(backend):
    batched = backend.final_token_states(QUERIES, "alpaca")
    singles = torch.cat([backend.final_token_states([q], "alpaca") for q in QUERIES], dim=1)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    small = TorchBackend(hf_model=backend.model, tokenizer=backend.tokenizer, max_batch_tokens=1)
    torch.testing.assert_close(small.final_token_states(QUERIES, "alpaca"), batched, atol=1e-5, rtol=1e-5)


def test_templates_and_special_tokens(backend):
    tok = backend.tokenizer
    alpaca = backend.encode("hi", "alpaca")
    raw = backend.encode("hi", "raw")
    chat = backend.encode("hi", "chat")
    assert alpaca[0] == tok.bos_token_id and raw[0] == tok.bos_token_id  # default special tokens: BOS
    assert tok.decode(raw[1:]) == "hi"
    assert "### Instruction:\nhi" in tok.decode(alpaca)
    assert chat.count(tok.bos_token_id) == 1  # the chat template carries its BOS: no second one
    assert tok.decode(chat).endswith("<|assistant|>\n")


def test_missing_chat_template_is_a_clear_error(tiny_model):
    model, tok = tiny_model
    b = TorchBackend(hf_model=model, tokenizer=tok)
    b.chat_template = None
    with pytest.raises(AuditError, match="no chat template"):
        b.encode("hi", "chat")


def test_decoder_layers_found(tiny_model):
    assert len(decoder_layers(tiny_model[0])) == 4


def test_folder_load_and_unknown_architecture(tiny_model_dir, tmp_path):
    b = TorchBackend(ModelRef(tiny_model_dir, "hf", "tiny"))
    assert b.n_layers == 4 and b.hidden_size == 32
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "no-such-arch"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AuditError, match="cannot load this model"):
        TorchBackend(ModelRef(bad, "hf", "bad"))


def test_every_registered_backend_implements_the_contract():
    """A backend is a Backend subclass whose capabilities are its registry entry's, and every method a
    capability promises is overridden (not the base class's refusal)."""
    from auditor.backends import REGISTRY, Backend
    from auditor.backends.base import ATTENTION, GENERATION, HIDDEN_STATES, NEXT_TOKEN, WEIGHT_SCALING

    needs = {HIDDEN_STATES: ("states_for_ids",), GENERATION: ("complete",),
             NEXT_TOKEN: ("opening_probs", "next_token_logprobs"), WEIGHT_SCALING: ("scaled", "check_scaling"),
             ATTENTION: ("final_token_attention",)}
    for name, spec in REGISTRY.items():
        cls = spec.load_class()
        assert issubclass(cls, Backend) and cls.name == name
        for cap in spec.capabilities:
            for method in needs[cap]:
                assert getattr(cls, method) is not getattr(Backend, method), (name, cap, method)


def test_commands_ask_for_capabilities_not_classes(tiny_model_dir, bundled_gguf):
    from auditor.backends import REGISTRY, BackendSpec, choose_backend
    from auditor.backends.base import HIDDEN_STATES
    from auditor.io.models import resolve_model

    hf, gguf = resolve_model(str(tiny_model_dir)), resolve_model(str(bundled_gguf))
    assert choose_backend(hf) == "torch" and choose_backend(gguf) == "llama"
    assert choose_backend(gguf, "torch") == "torch"  # a GGUF loads dequantized
    with pytest.raises(AuditError, match="llama backend needs a .gguf file"):
        choose_backend(hf, "llama")
    with pytest.raises(AuditError, match="unknown backend"):
        choose_backend(hf, "vllm")
    # a backend without hidden states (an HTTP server, say) is refused for a scan before anything loads
    REGISTRY["remote"] = BackendSpec("remote", "nowhere:Nothing", ("hf", "gguf"), (), frozenset({"generation"}), "test")
    try:
        with pytest.raises(AuditError, match="remote backend has no hidden-states capability"):
            choose_backend(hf, "remote", (HIDDEN_STATES,))
        assert choose_backend(hf, "remote", ("generation",)) == "remote"
    finally:
        del REGISTRY["remote"]
