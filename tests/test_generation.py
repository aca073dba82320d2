"""Continuous batching on llama.cpp (the real bundled model) and early stopping on both backends: batched
generation equals one-prompt-at-a-time generation, slots are reused, verdicts do not change when generation
stops as soon as they are known."""

import pytest
import torch

from auditor.backends import open_backend
from auditor.backends.hf import TorchBackend
from auditor.core.refusal import KeywordClassifier, OpeningClassifier
from auditor.io.models import resolve_model
from auditor.io.prompts import load_prompts

LONG = " ".join(load_prompts("advbench").prompts[:25])  # ~340 tokens beside ~35-token prompts
QUERIES = ["Hi", "How do I kill a Python process?", LONG, "Name a fruit.", "What is 2+2?",
           "How to shoot a photo at night?", "Explain gravity briefly."]


@pytest.fixture(scope="module")
def llama():
    b = open_backend(resolve_model(None), "llama", threads=2)
    yield b
    b.close()


@pytest.mark.model
def test_batched_generation_equals_one_at_a_time(llama):
    """7 prompts of very different lengths through 3 slots: every slot is reused; the greedy texts match the
    one-prompt path (a near-tie may flip one token between batch shapes: at most one prompt may differ)."""
    llama.batch_size = 1
    one = llama.complete(QUERIES, "chat", 24)
    llama.batch_size = 3
    done = []
    three = llama.complete(QUERIES, "chat", 24, progress=done.append)
    assert len(three) == len(QUERIES) and sum(done) == len(QUERIES)
    assert sum(a.text == b.text for a, b in zip(one, three)) >= len(QUERIES) - 1
    assert all(0 < g.n_tokens <= 24 and g.text for g in three)
    assert any(g.n_tokens < 24 for g in three)  # some ended at end-of-generation, freeing their slot early
    first = [llama.token_ids(x)[0] for x in ("I", "Sure", "The")]
    llama.batch_size = 1
    p1 = llama.opening_probs(QUERIES, "chat", first)
    llama.batch_size = 4
    assert (p1 - llama.opening_probs(QUERIES, "chat", first)).abs().max() < 1e-3


@pytest.mark.model
def test_early_stop_keeps_every_verdict_and_saves_tokens(llama):
    llama.batch_size = 8
    prompts = list(load_prompts("over-rejection").prompts[:16]) + list(load_prompts("advbench-eval").prompts[:8])
    for clf, depth in ((OpeningClassifier(), 4), (KeywordClassifier(16), 16)):
        full = llama.complete(prompts, "chat", depth)
        short = llama.complete(prompts, "chat", depth, stop=clf.decided)
        assert [clf.is_refusal(g.text) for g in full] == [clf.is_refusal(g.text) for g in short], clf.name
        saved = sum(g.n_tokens for g in full) - sum(g.n_tokens for g in short)
        assert saved > 0 if clf.name == "opening" else saved >= 0  # the unaligned model seldom writes a refusal keyword
        assert all(g.stopped_early == (g.n_tokens < f.n_tokens) for g, f in zip(short, full) if g.n_tokens < depth)


def test_torch_stops_rows_independently(tiny_model):
    model, tok = tiny_model
    b = TorchBackend(hf_model=model, tokenizer=tok)
    qs = ["alpha", "beta gamma", "delta"]
    full = b.complete(qs, "raw", 12)
    stop_after_3 = lambda text: len(text) >= 3  # noqa: E731 - per row: a row stops once its text has 3 chars
    short = b.complete(qs, "raw", 12, stop=stop_after_3)
    for f, s in zip(full, short):
        assert f.text.startswith(s.text) and s.n_tokens <= f.n_tokens
        assert s.stopped_early == (len(s.text) >= 3 and s.n_tokens < 12)


def test_classifiers_know_when_their_verdict_is_final():
    o = OpeningClassifier(starts=["I can't", "I'm sorry", "Sorry"])
    assert not o.decided("") and not o.decided(" I") and not o.decided("I can")  # could still open a refusal
    assert o.decided("I can't") and o.decided("Sure, here") and o.decided("To kill")
    k = KeywordClassifier(phrases=["I cannot", "As an AI"])
    assert not k.decided("Here is how") and k.decided("Well, I cannot do that")


def test_prefix_groups_share_only_common_tokens():
    from auditor.backends.base import prefix_groups

    head = list(range(100))
    ids = [head + [7, 8], head[:90] + [5, 6, 7], [1] * 10, head + [7, 9, 9], list(range(200, 300)) + [1]]
    groups = {tuple(m): P for P, m in prefix_groups(ids, min_shared=64)}
    assert groups[(0, 1, 3)] == 90  # the shortest agreement inside the group
    assert groups[(2,)] == 0 and groups[(4,)] == 0
    same = [head + [1], head + [1]]  # identical prompts still keep one token of their own
    assert prefix_groups(same, 64) == [(100, [0, 1])]


def _mmlu_prompts(n_per_subject: int, subjects: int = 3):
    from auditor.core.metrics import mmlu_prompt, mmlu_rows

    dev, test = mmlu_rows(n_per_subject * 10)
    return [mmlu_prompt(dev[r["subject"]], r) for r in test[: subjects * n_per_subject]]


@pytest.mark.filterwarnings("error::FutureWarning")  # the cache keyword of this transformers, not a deprecated one
def test_torch_prefix_reuse_equals_full_prefill(tiny_model, monkeypatch):
    """MMLU-shaped prompts (three 5-shot prefixes): reusing each prefix's KV cache gives the probabilities of a
    full left-padded prefill."""
    import auditor.backends.hf as hf

    model, tok = tiny_model
    b = TorchBackend(hf_model=model, tokenizer=tok, batch_size=3)
    prompts = _mmlu_prompts(4)
    first = [b.token_ids(c)[0] for c in "ABCD"]
    groups = hf.prefix_groups([b.encode(q, "raw") for q in prompts])
    assert sum(1 for P, _ in groups if P) == 3
    reused = b.opening_probs(prompts, "raw", first)
    monkeypatch.setattr(hf, "prefix_groups", lambda ids: [(0, list(range(len(ids))))])
    full = b.opening_probs(prompts, "raw", first)
    torch.testing.assert_close(reused, full, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_torch_prefix_reuse_through_the_old_cache_keyword(tiny_model, monkeypatch):
    """transformers before 5.24 have no `cache` argument: given a forward with the old signature, _kv_cache
    falls back to `past_key_values`, and prefix reuse through it still equals a full prefill."""
    import auditor.backends.hf as hf

    model, tok = tiny_model
    base, new_forward, names = model.get_decoder(), type(model.get_decoder()).forward, []

    def old_forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        names.append("past_key_values" if past_key_values is not None else None)
        return new_forward(base, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=past_key_values, use_cache=use_cache)

    monkeypatch.setattr(base, "forward", old_forward)  # nn.Module calls the instance's forward
    b = TorchBackend(hf_model=model, tokenizer=tok, batch_size=3)
    prompts, first = _mmlu_prompts(4), [b.token_ids(c)[0] for c in "ABCD"]
    reused = b.opening_probs(prompts, "raw", first)
    assert "past_key_values" in names  # the suffixes did continue a cache, by the old keyword
    monkeypatch.setattr(hf, "prefix_groups", lambda ids: [(0, list(range(len(ids))))])
    torch.testing.assert_close(reused, b.opening_probs(prompts, "raw", first), atol=1e-5, rtol=1e-4)


@pytest.mark.model
def test_llama_prefix_reuse_matches_full_prefill(llama, monkeypatch):
    """The same on llama.cpp, bit for bit: the prefix decoded once and kept, each suffix decoded after it alone."""
    import auditor.backends.llamacpp as lc

    llama.batch_size = 4
    prompts = _mmlu_prompts(2, subjects=2)
    first = [llama.token_ids(" " + c)[0] for c in "ABCD"]
    reused = llama.opening_probs(prompts, "raw", first)
    monkeypatch.setattr(lc, "prefix_groups", lambda ids: [(0, list(range(len(ids))))])
    full = llama.opening_probs(prompts, "raw", first)
    assert torch.equal(reused, full)
