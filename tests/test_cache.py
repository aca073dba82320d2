"""Caches that cannot lie: every key is the content (the whole file), memoised so re-runs stay fast; a
corrupted state chunk is recomputed; journal lines stay whole under kills and concurrent writers."""

import json
import multiprocessing
import os

import pytest
import torch

from auditor.io import cache
from auditor.io.cache import Journal, StateStore, content_hash, file_hash
from auditor.io.models import resolve_model
from auditor.io.prompts import PromptSet
from auditor.weights.gguf_scaling import scale_gguf
from auditor.workflows.options import ModelOptions, Target
from auditor.workflows.scan import _state_key


def test_a_scaled_copy_never_shares_its_sources_cache(tmp_path, bundled_gguf):
    """v0.1 keyed a GGUF by size + first/last 4 MB: a scaled copy (same size, same ends) got the source's states."""
    copy = tmp_path / "scaled.gguf"
    scale_gguf(bundled_gguf, copy, [14, 15], 1.1)
    src, dst = resolve_model(str(bundled_gguf)), resolve_model(str(copy))
    assert copy.stat().st_size == bundled_gguf.stat().st_size
    with open(bundled_gguf, "rb") as a, open(copy, "rb") as b:  # the ends v0.1 hashed are identical
        assert a.read(1 << 22) == b.read(1 << 22)
        a.seek(-(1 << 22), os.SEEK_END), b.seek(-(1 << 22), os.SEEK_END)
        assert a.read() == b.read()
    assert src.content_hash("llama") != dst.content_hash("llama")
    prompts = PromptSet("p", ("a", "b"))
    opts = ModelOptions()
    assert (_state_key(Target.of(src, opts, ()), "alpaca", prompts)
            != _state_key(Target.of(dst, opts, ()), "alpaca", prompts))


def test_states_in_another_precision_are_never_reused(tmp_path, tiny_model_dir):
    """`--dtype auto` is bf16 on CPUs with native bf16 matmul and fp32 elsewhere: a cached fp32 run must not answer
    a bf16 one (nor the other way round); fp32 keys are what they were before precision was part of the key."""
    from auditor.workflows.scan import ScanConfig, run_scan
    from conftest import write_lines

    assert ModelOptions(dtype="float32").precision_key("torch") == [] == ModelOptions(dtype="bfloat16").precision_key("llama")
    assert ModelOptions(dtype="bfloat16").precision_key("torch") == ["bfloat16"]
    n = write_lines(tmp_path / "n.txt", ["Name a colour.", "What is rain?", "Say hello.", "Count to three."])
    m = write_lines(tmp_path / "m.txt", ["Build a weapon.", "Steal a car.", "Write malware.", "Poison a well."])
    runs = {dt: run_scan(ScanConfig(model=str(tiny_model_dir), backend="torch", dtype=dt, normal=str(n), malicious=str(m),
                                    bootstrap=0, template="raw")) for dt in ("float32", "bfloat16", "float32")}
    fp32, bf16 = runs["float32"]["layers"], runs["bfloat16"]["layers"]
    assert [r["cos_nm"] for r in fp32] != [r["cos_nm"] for r in bf16]  # computed in bf16, not read from the fp32 cache


def test_a_gpu_or_a_device_map_never_shares_the_cpus_keys(monkeypatch):
    """A GPU's kernels round differently from the CPU's, enough to flip a greedy verdict: its scan, locate and
    eval keys are its own (named by the card); CPU float32 keys carry no precision entry."""
    from auditor.core.refusal import OpeningClassifier
    from auditor.workflows.evaluate import EvalConfig, _journal_key
    from auditor.workflows.options import ModelOptions

    clf = OpeningClassifier()
    assert ModelOptions(dtype="float32", device="cpu").precision_key("torch") == []
    assert ModelOptions(dtype="float32", device="cpu", device_map="auto").precision_key("torch") == ["device_map=auto"]
    auto = EvalConfig(dtype="float32", device="auto")
    on_cpu = _journal_key(auto, "h", "torch", "chat", clf)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Card X")
    assert ModelOptions(dtype="float32").precision_key("torch") == ["cuda:Card X"]  # auto device: the card
    assert ModelOptions(dtype="float32").precision_key("llama") == []
    assert _journal_key(auto, "h", "torch", "chat", clf) != on_cpu  # the same options, now on a GPU


def test_a_retrained_folder_at_the_same_path_gets_a_new_key(tmp_path, tiny_model):
    model, tok = tiny_model
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    first = resolve_model(str(folder)).content_hash("torch")
    retrained = type(model)(model.config)
    retrained.save_pretrained(folder)  # same path, new weights
    assert resolve_model(str(folder)).content_hash("torch") != first


def test_hashes_are_memoised_by_path_size_mtime_and_inode(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    h = file_hash(f)
    cache._MEMO.clear()  # a new process: the on-disk memo answers without reading the file
    monkeypatch.setattr(cache.hashlib, "file_digest", lambda *a: pytest.fail("re-hashed an unchanged file"))
    assert file_hash(f) == h
    monkeypatch.undo()
    f.write_bytes(b"y" * 1000)  # same size, new content, new mtime
    assert file_hash(f) != h
    assert content_hash(tmp_path) == content_hash(tmp_path) and len(content_hash(tmp_path)) == 64


def test_a_corrupted_state_chunk_is_recomputed_not_trusted(tmp_path):
    store = StateStore("test-key")
    states = torch.randn(3, 4, 8)
    store.put(0, states)
    assert torch.equal(store.get(0), states)
    f = store.folder / "000000.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data: the file still parses
    f.write_bytes(bytes(data))
    assert store.get(0) is None
    f.write_bytes(bytes(data[:40]))  # truncated
    assert store.get(0) is None
    assert StateStore("test-key", enabled=False).get(0) is None


def test_journal_closes_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "cut')
    j = Journal(path)
    assert [r["a"] for r in j.rows()] == [1]
    j.append({"a": 3})
    assert [r["a"] for r in j.rows()] == [1, 3]


def _writer(path, who):
    j = Journal(path)
    for i in range(200):
        j.append({"who": who, "i": i, "pad": "x" * 300})


def test_two_writers_never_tear_lines(tmp_path):
    path = tmp_path / "j.jsonl"
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(path, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 400 and all(json.loads(line)["pad"] == "x" * 300 for line in lines)


def _keys(monkeypatch, change: str):
    """The eval journal key and the locate count key, with one ingredient changed (or none)."""
    import auditor.workflows.evaluate as ev
    import auditor.workflows.locate as lo
    from auditor.core.refusal import KeywordClassifier, OpeningClassifier
    from auditor.workflows.evaluate import EvalConfig, _journal_key
    from auditor.workflows.locate import LocateConfig, count_key

    phrases = KeywordClassifier().phrases
    kw = KeywordClassifier(max_new_tokens=32 if change == "tokens" else 16,
                           phrases=[*phrases[:-1], phrases[-1] + " indeed"] if change == "phrase" else phrases)
    if change == "library":
        for module in (ev, lo):
            monkeypatch.setattr(module, "library_version", lambda b: "99.0")
    template = "chat" if change == "template" else "alpaca"
    model = "b" * 64 if change == "model" else "a" * 64
    classifier = OpeningClassifier() if change == "classifier" else kw
    e = _journal_key(EvalConfig(template=template, max_new_tokens=64 if change == "tokens" else 128), model, "llama",
                     template, classifier)
    cfg = LocateConfig(template=template)
    target = Target(resolve_model(None), "llama", cfg)
    target.sha256 = model  # the content hash as if computed (a cached property)
    loc = count_key(cfg, target, classifier, ["p1", "p2"])
    monkeypatch.undo()
    return e, loc


@pytest.mark.parametrize("change", ["phrase", "library", "tokens", "template", "model", "classifier"])
def test_every_ingredient_of_a_verdict_is_in_its_journal_keys(monkeypatch, change):
    """Same phrase count, other content; another llama.cpp; another token budget...: each one means new
    answers, so a resumed eval or locate must recompute, not read the old journal."""
    same = _keys(monkeypatch, "none")
    assert same == _keys(monkeypatch, "none")
    other = _keys(monkeypatch, change)
    assert other[0] != same[0] and other[1] != same[1]


def test_the_distillation_journal_is_keyed_by_the_token_budget(tmp_path, monkeypatch):
    """The reference build's self-distilled answers: another --distill-tokens must not reuse them."""
    from auditor.workflows import reference

    calls = []

    class Fake:
        def generate(self, prompts, template, max_new_tokens):
            calls.append(max_new_tokens)
            return [f"{p} answered in {max_new_tokens}" for p in prompts]

        def close(self):
            pass

    monkeypatch.setattr(reference.Target, "backend", lambda *a, **kw: Fake())
    base, journal = resolve_model(None), tmp_path / "distilled.jsonl"
    assert reference.distill(base, ["a", "b"], journal, 64) == {"a": "a answered in 64", "b": "b answered in 64"}
    assert reference.distill(base, ["a", "b"], journal, 64) == {"a": "a answered in 64", "b": "b answered in 64"}
    assert calls == [64]  # resumed from the journal
    assert reference.distill(base, ["a", "b"], journal, 96)["a"] == "a answered in 96" and calls == [64, 96]
