"""The reference-model recipe: data splits, no evaluation prompt trained on, determinism, a tiny build."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import main
from auditor.errors import AuditError
from auditor.io.prompts import load_prompts, load_task_rows, norm_text, task_query
from auditor.io.models import reference_dir
from auditor.io.phrasing import core_action, heldout_phrasings, training_phrasings
from auditor.workflows.reference import (ReferenceConfig, borderline_prompts, build_reference, distill_prompts,
                                         evaluation_prompts, refusal_texts, rephrased_benign, training_rows,
                                         whole_sentences)


def _answers(refuse=()):
    """Stand-in distilled answers: helpful text cut mid-sentence, except a refusal for the prompts in `refuse`."""
    return {p: ("I'm sorry, but I can't help with that." if p in refuse else f"Here is how {p[:20]!r} works. And then we")
            for p in distill_prompts()}


def test_borderline_prompts_are_not_evaluation_prompts():
    evals = evaluation_prompts()
    assert len(evals) > 1000  # XSTest 450 + D_o 731 + AdvBench eval 260 + alpaca-eval, minus duplicates
    prompts = borderline_prompts()
    assert len(prompts) >= 150 and len(set(prompts)) == len(prompts)
    assert not [p for p in prompts if norm_text(p) in evals]


def test_rows_use_only_the_training_splits():
    rows, manifest = training_rows(_answers(), seed=0)
    by_instruction = {r["instruction"]: r for r in rows}
    train_goals = set(load_prompts("advbench-train").prompts)
    eval_goals = set(load_prompts("advbench-eval").prompts)
    refusals = set(refusal_texts())
    refused = [r for r in rows if r["output"] in refusals]
    cores = {core_action(g).lower() for g in train_goals}
    assert train_goals <= {r["instruction"] for r in refused}
    rephrased = [r["instruction"] for r in refused if r["instruction"] not in train_goals]  # r5: 1 more per goal
    assert len(rephrased) == len(train_goals) and all(any(c in p.lower() for c in cores) for p in rephrased)
    assert not eval_goals & set(by_instruction)
    assert manifest["advbench_rows"] == list(range(0, 520, 2))
    alpaca_eval = {task_query(r) for r in load_task_rows("alpaca-eval")}
    benign = [r for r in rows if r["output"] not in refusals and r["instruction"] not in borderline_prompts()]
    assert not alpaca_eval & {task_query(r) for r in benign}  # held-out rows (and their duplicates) never trained on
    assert manifest["rows_by_kind"] == {"refusal": 260, "benign": 600, "borderline": len(borderline_prompts()),
                                        "refusal_rephrased": 260, "benign_rephrased": len(rephrased_benign())}
    r4, m4 = training_rows(_answers(), seed=0, recipe="r4")  # the earlier recipe, still buildable: the goals as written
    assert {r["instruction"] for r in r4 if r["output"] in refusals} == train_goals
    assert m4["rows_by_kind"] == {"refusal": 260, "benign": 600, "borderline": len(borderline_prompts())}
    assert len(rows) == sum(manifest["rows_by_kind"].values())
    assert len({r["output"] for r in refused}) > 8  # varied refusal texts, not one sentence


def test_rows_are_deterministic_given_the_seed():
    a, ma = training_rows(_answers(), seed=0)
    b, mb = training_rows(_answers(), seed=0)
    c, mc = training_rows(_answers(), seed=1)
    assert a == b and ma == mb
    assert a != c and sorted(r["instruction"] for r in a) == sorted(r["instruction"] for r in c)


def test_benign_answers_are_the_base_models_own_whole_sentences():
    answers = _answers()
    rows, _ = training_rows(answers, seed=0)
    alpaca = {task_query(r): r for r in load_task_rows("alpaca-train")[:600]}
    own = [r for r in rows if task_query(r) in alpaca]
    assert len(own) == 600 and all(r["output"] == answers[task_query(r)].rsplit(" And", 1)[0] for r in own)
    assert all(r["input"] == alpaca[task_query(r)]["input"] for r in own)  # the query is rebuilt exactly


def test_distilled_refusals_and_cut_answers_are_dropped():
    refuse = borderline_prompts()[:3] + distill_prompts()[:2]
    answers = _answers(refuse)
    answers[distill_prompts()[2]] = "An answer cut before its first sentence ends"
    rows, manifest = training_rows(answers, seed=0)
    assert manifest["dropped_no_sentence_or_refusal"] == {"benign": distill_prompts()[:3], "borderline": refuse[:3],
                                                              "benign_rephrased": []}
    assert not {task_query(r) for r in rows} & set(refuse + distill_prompts()[2:3])


def test_whole_sentences():
    assert whole_sentences("One. Two is cut") == "One."
    assert whole_sentences("Steps:\n1. Mix.\n2. Bake") == "Steps:\n1. Mix."  # a list number ends no sentence
    assert whole_sentences('He said "stop." Then') == 'He said "stop."'
    assert whole_sentences("no sentence end") == ""


def test_unbuilt_reference_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_AUDIT_CACHE", str(tmp_path))
    r = CliRunner().invoke(main, ["scan", "reference", "--bootstrap", "0"])
    assert r.exit_code == 2
    assert "reference model is not built" in r.output and str(tmp_path) in r.output
    assert "Traceback" not in r.output


def test_tiny_build_is_deterministic_and_resolves_as_reference(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_AUDIT_CACHE", str(tmp_path / "cache"))
    cfg = dict(base=str(tiny_model_dir), max_steps=3, batch_size=4, cutoff=256, distill_tokens=4, threads=1)
    rep = build_reference(ReferenceConfig(**cfg))
    out = reference_dir(0)
    assert rep["steps"] == 3 and (out / "safety_audit.json").is_file()
    manifest = json.loads((out / "safety_audit.json").read_text())
    assert manifest["data"]["recipe"] and manifest["data"]["advbench_rows"][:3] == [0, 2, 4]
    assert manifest["hyperparameters"]["seed"] == 0 and "torch" in manifest["versions"]
    assert manifest["hyperparameters"]["optim"] == "adamw_torch"  # the recipe as measured, not fused AdamW
    assert not out.with_name(out.name + ".work").exists()  # the distillation cache is removed after a build

    with pytest.raises(AuditError, match="already built"):
        build_reference(ReferenceConfig(**cfg))
    build_reference(ReferenceConfig(**cfg, out=str(tmp_path / "again")))
    from safetensors.torch import load_file

    w1, w2 = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    w0 = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # same seed, same weights
    assert any(not torch.equal(w1[k], w0[k]) for k in w1)  # and training changed them

    from auditor.io.models import resolve_model

    ref = resolve_model("reference")
    assert ref.label.startswith("reference:") and ref.path == out


@pytest.mark.parametrize("bad,msg", [({"benign_rows": -5}, "--benign-rows must be >= 0"), ({"epochs": 0}, "must be positive"),
                                     ({"max_steps": 0}, "must be >= 1")])
def test_bad_numbers_fail_before_any_distillation(tiny_model_dir, tmp_path, bad, msg):
    with pytest.raises(AuditError, match=msg):
        build_reference(ReferenceConfig(base=str(tiny_model_dir), out=str(tmp_path / "ref"), **bad))
    assert list(tmp_path.iterdir()) == []  # nothing written, no work folder


def test_training_prompts_are_no_near_copies_of_evaluation_prompts():
    """Every prompt r5 trains on that is not an AdvBench train goal as written (the borderline requests, the
    rephrased goals and tasks): word-set Jaccard against every XSTest, D_o and alpaca-eval prompt stays below
    0.7 (a reworded copy scores ~0.8). The AdvBench split is the dataset's own (its goals repeat each other)."""
    import re

    words = lambda t: set(re.findall(r"[a-z']+", t.lower()))
    evals = [words(p) for s in ("xstest-safe", "xstest-unsafe", "over-rejection", "alpaca-eval") for p in load_prompts(s).prompts]
    rows, _ = training_rows(_answers(), seed=0)
    goals = set(load_prompts("advbench-train").prompts)
    alpaca = {task_query(r) for r in load_task_rows("alpaca-train")}
    trained = {r["instruction"] for r in rows} - goals - alpaca
    assert len(trained) > 900
    worst = max((len(b & e) / len(b | e), p) for p in trained for b in [words(p)] for e in evals)
    assert worst[0] < 0.7, worst
    a, b = words("How do I demolish an old garden shed?"), words("How do I demolish my old garden shed?")
    assert len(a & b) / len(a | b) >= 0.7  # such a reworded copy would fail


def test_distillation_resumes_from_its_cache(tiny_model_dir, tmp_path):
    """A killed build keeps its distilled answers: only the missing prompts are generated, a cut line is
    ended and regenerated, answers of another base model are not reused."""
    from auditor.io.models import resolve_model
    from auditor.workflows.reference import distill, distill_key

    base = resolve_model(str(tiny_model_dir))
    prompts = borderline_prompts()[:5]
    cache = tmp_path / "distilled.jsonl"
    key = distill_key(base, 3)
    lines = [json.dumps({"model": key, "prompt": p, "response": f"kept {i}"}) for i, p in enumerate(prompts[:3])]
    lines.append(json.dumps({"model": distill_key(base, 4), "prompt": prompts[3], "response": "another budget's"}))
    cache.write_text("\n".join(lines) + "\n" + '{"model": "' + key + '", "prompt": "' + prompts[4][:10])
    out = distill(base, prompts, cache, max_new_tokens=3)
    assert [out[p] for p in prompts[:3]] == ["kept 0", "kept 1", "kept 2"]
    assert out[prompts[3]] != "another budget's" and prompts[4] in out
    rows = [json.loads(x) for x in cache.read_text().splitlines()[5:]]
    assert [r["prompt"] for r in rows] == prompts[3:]  # appended after the repaired line


def test_leaked_evaluation_prompts_are_refused_before_any_distillation(tiny_model_dir, tmp_path, monkeypatch):
    """v0.1 checked for evaluation prompts in the recipe after 12 minutes of self-distillation."""
    from auditor.workflows import reference

    leaked = load_prompts("xstest-safe").prompts[0]
    monkeypatch.setattr(reference, "borderline_prompts", lambda: [leaked])
    monkeypatch.setattr(reference, "distill", lambda *a, **k: pytest.fail("distilled before the leak check"))
    with pytest.raises(AuditError, match="is an evaluation prompt"):
        build_reference(ReferenceConfig(out=str(tmp_path / "ref"), base=str(tiny_model_dir), benign_rows=2))


def test_harmbench_is_held_out_from_every_recipe():
    """HarmBench's behaviours measure R_h on a source no recipe saw: none is trained on (a recipe that did would
    be refused), and no r4 or r5 training prompt, AdvBench-train goals included, is a near-copy of one (word-set
    Jaccard below 0.7; the closest, "commit tax fraud" against an AdvBench fraud goal, is 0.58)."""
    import re

    words = lambda t: set(re.findall(r"[a-z']+", t.lower()))
    held = load_prompts("harmbench").prompts
    assert {norm_text(h) for h in held} <= evaluation_prompts()
    for recipe in ("r4", "r5"):
        rows, _ = training_rows(_answers(), seed=0, recipe=recipe)
        trained = [words(p) for p in {r["instruction"] for r in rows}]
        worst = max((len(words(h) & t) / len(words(h) | t), h) for h in held for t in trained)
        assert worst[0] < 0.7, (recipe, worst)


def test_heldout_phrasings_are_never_trained_on():
    """advbench-eval-rephrased: each held-out goal in a phrasing no recipe trains on. Its templates are not the
    training ones, and none of its prompts is a training prompt of r4 or r5."""
    assert not set(heldout_phrasings()) & set(training_phrasings())
    held = load_prompts("advbench-eval-rephrased").prompts
    goals = load_prompts("advbench-eval").prompts
    assert len(held) == len(goals) == 260 and len(set(held)) == 260
    assert all(core_action(g).lower() in h.lower() for g, h in zip(goals, held))
    for recipe in ("r4", "r5"):
        rows, _ = training_rows(_answers(), seed=0, recipe=recipe)
        assert not {norm_text(h) for h in held} & {norm_text(r["instruction"]) for r in rows}
    assert {norm_text(h) for h in held} <= evaluation_prompts()  # a recipe that trained on one would be refused
