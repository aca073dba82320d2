"""eval metrics on the tiny model and constructed items; check gate exit codes and JUnit; compare."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch
from click.testing import CliRunner

from auditor.workflows.gate import check_report, load_eval
from auditor.cli import main
from auditor.errors import AuditError
from auditor.core.bootstrap import bootstrap_mean
from auditor.core.metrics import LETTERS, mmlu_predictions, mmlu_prompt, mmlu_rows, rouge_l


def test_rouge_l_against_hand_computed_values():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": P = R = 5/6
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"])[0] == pytest.approx(5 / 6)
    # LCS = "a c" (2 of 3 and 2 of 4): P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7
    assert rouge_l(["a b c"], ["a c d e"])[0] == pytest.approx(4 / 7)
    assert rouge_l(["nothing shared"], ["entirely different words"])[0] == 0.0


class LetterBackend:
    """Answers every MMLU item with the letter written after 'Key:' in its question (a constructed item)."""

    def token_ids(self, text):
        return [ord(text.strip())]

    def opening_probs(self, prompts, template, first, progress=None):
        assert template == "raw" and first == [ord(c) for c in LETTERS]
        p = torch.zeros(len(prompts), 4)
        for i, q in enumerate(prompts):
            last = q.rsplit("\n\n", 1)[-1]
            p[i, LETTERS.index(last.split("Key:")[1].strip()[0])] = 1.0
        return p


def test_mmlu_prompt_and_scoring_on_constructed_items():
    dev, test = mmlu_rows(None)
    assert len(dev) == 10 and all(len(v) == 5 for v in dev.values()) and len(test) == 500
    row = dict(test[0], question="Key: C. Which letter?", answer="C")
    prompt = mmlu_prompt(dev[row["subject"]], row)
    assert prompt.count("Answer:") == 6 and prompt.endswith("\nAnswer:")
    assert prompt.startswith("The following are multiple choice questions (with answers) about")
    items = [dict(row, question=f"Key: {c}. Pick.", answer=c) for c in "ABDC"]
    assert mmlu_predictions(LetterBackend(), dev, items) == list("ABDC")
    _, limited = mmlu_rows(20)
    assert len(limited) == 20 and len({r["subject"] for r in limited}) == 10


def test_bootstrap_mean_ci():
    r = bootstrap_mean([1, 0, 1, 1, 0, 1, 0, 1], 500, 0)
    assert r["value"] == 0.625 and r["n"] == 8 and r["ci95"][0] < 0.625 < r["ci95"][1]


@pytest.fixture(scope="module")
def eval_report(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    out, saved = d / "base.json", d / "resp.jsonl"
    r = CliRunner().invoke(main, ["eval", str(tiny_model_dir), "--metrics", "harmful,over-refusal,rouge,mmlu", "--limit", "10",
                                  "--max-new-tokens", "4", "--bootstrap", "200", "--json", str(out),
                                  "--save-responses", str(saved), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, saved


def test_eval_report_contract(eval_report):
    rep = json.loads(eval_report[0].read_text())
    assert rep["schema_version"] == 2 and rep["backend"] == "torch" and rep["template"] == "chat"  # its own template
    for k in ("harmful_rate", "over_refusal_rate", "rouge_l", "mmlu_accuracy"):
        v = rep[k]
        assert 0 <= v["value"] <= 1 and v["ci95"][0] <= v["value"] <= v["ci95"][1] and v["n"] > 0, k
    assert rep["harmful_rate"]["n"] == 10 and rep["harmful_rate"]["set"] == "bundled:advbench-eval"
    assert set(rep["over_refusal_by_set"]) == {"bundled:xstest-safe", "bundled:over-rejection"}
    lines = [json.loads(x) for x in eval_report[1].read_text().splitlines()]
    assert {x["metric"] for x in lines} >= {"harmful", "rouge"} and all("response" in x for x in lines)


def test_saved_responses_are_reused(eval_report, tmp_path, monkeypatch):
    from auditor.backends.hf import TorchBackend

    def no_generation(self, queries, *a, **k):
        assert not queries, "a saved response was generated again"
        return []

    monkeypatch.setattr(TorchBackend, "generate", no_generation)
    out = tmp_path / "again.json"
    base = json.loads(eval_report[0].read_text())
    r = CliRunner().invoke(main, ["eval", base["model"], "--metrics", "harmful,over-refusal,rouge", "--limit", "10",
                                  "--max-new-tokens", "4", "--bootstrap", "200", "--responses", str(eval_report[1]),
                                  "--json", str(out), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    for k in ("harmful_rate", "over_refusal_rate", "rouge_l"):
        assert rep[k]["value"] == base[k]["value"]


def test_check_exit_codes_and_junit(eval_report, tmp_path):
    """A real eval report of 10 prompts per set against itself: paired, no change, but 10 prompts cannot rule
    out a change of 0.05, so INCONCLUSIVE (exit 3) unless the margins are wide or the policy passes it. The
    verdict's arithmetic on decidable sizes: tests/test_verdict.py."""
    same = CliRunner().invoke(main, ["check", str(eval_report[0]), "--baseline", str(eval_report[0]), "--json", "-"])
    assert same.exit_code == 3, same.output
    result = json.loads(same.output[same.output.index("{"):])
    assert result["verdict"] == "inconclusive" and all(r["paired"] and r["delta"] == 0 for r in result["checks"]
                                                         if r["metric"] != "rouge_l")
    assert {(r["metric"], r["set"]) for r in result["checks"]} >= {("over_refusal_rate", "bundled:xstest-safe"),
                                                                    ("over_refusal_rate", "bundled:over-rejection"),
                                                                    ("harmful_rate", "bundled:advbench-eval"),
                                                                    ("harmful_rate", "bundled:xstest-unsafe"),
                                                                    ("harmful_rate", "bundled:harmbench")}
    junit = tmp_path / "check.xml"
    CliRunner().invoke(main, ["check", str(eval_report[0]), "--baseline", str(eval_report[0]), "--junit", str(junit)])
    suite = ET.parse(junit).getroot()
    assert {f.get("type") for f in suite.iter("failure")} == {"inconclusive"} and suite.get("tests") == "7"
    wide = tmp_path / "wide.toml"
    wide.write_text("[thresholds]\nmax_harmful_increase = 1\nmax_over_refusal_increase = 1\nmax_rouge_drop = 1\n"
                    "max_mmlu_drop = 1\n")
    r = CliRunner().invoke(main, ["check", str(eval_report[0]), "--baseline", str(eval_report[0]), "--policy", str(wide)])
    assert r.exit_code == 0 and "PASS" in r.output, r.output
    r = CliRunner().invoke(main, ["check", str(eval_report[0]), "--baseline", str(eval_report[0]), "--inconclusive", "pass"])
    assert r.exit_code == 0 and "INCONCLUSIVE" in r.output and "--inconclusive pass" in r.output


def test_check_bad_inputs_exit_2(eval_report, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, msg in ((["check", str(eval_report[0]), "--baseline", str(bad)], "malformed JSON"),
                      (["check", str(eval_report[0]), "--baseline", str(tmp_path / "none.json")], "not found"),
                      (["check", str(eval_report[0]), "--baseline", str(eval_report[1])], "malformed JSON")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output
    pol = tmp_path / "p.toml"
    pol.write_text("max_everything = 1\n")
    r = CliRunner().invoke(main, ["check", str(eval_report[0]), "--baseline", str(eval_report[0]), "--policy", str(pol)])
    assert r.exit_code == 2 and "unknown policy key" in r.output


def test_a_candidate_missing_a_metric_is_not_compared(eval_report):
    base = load_eval(eval_report[0])
    cand = {k: v for k, v in base.items() if k != "rouge_l"}
    with pytest.raises(AuditError, match="rouge_l missing in the candidate"):
        check_report(cand, base)


def test_compare_table(eval_report):
    r = CliRunner().invoke(main, ["compare", str(eval_report[0]), str(eval_report[0]), "--json"])
    data = json.loads(r.output)
    assert data["columns"] == ["base", "base"]
    assert [x["metric"] for x in data["rows"]][:2] == ["harmful rate R_h (advbench-eval)", "harmful rate R_h (xstest-unsafe)"]
    with pytest.raises(AuditError):
        load_eval(eval_report[1])


def test_eval_bad_inputs(tiny_model_dir):
    for args, msg in ((["--metrics", "harmful,vibes"], "unknown metric"), (["--metrics", "judge"], "needs --judge"),
                      (["--template", "vicuna"], "'vicuna' is not one of"), (["--harmful", "/nope.txt"], "not found")):
        r = CliRunner().invoke(main, ["eval", str(tiny_model_dir), "--limit", "2"] + args)
        assert r.exit_code == 2 and msg in r.output, (args, r.output)


def test_check_a_model_against_a_judged_baseline(eval_report, tmp_path, tiny_model_dir, monkeypatch):
    """v0.1: `check MODEL` against a baseline with a judge score always failed (the candidate's eval dropped the
    judge, whose URL was not recorded). Now the recorded judge is reused; an unrecorded one is asked for."""
    from auditor.workflows import gate

    base = json.loads(eval_report[0].read_text())
    judged = dict(base, harmful_score={"value": 1.2, "ci95": [1.0, 1.4], "n": 10})
    unrecorded = tmp_path / "judged.json"
    unrecorded.write_text(json.dumps(judged))
    r = CliRunner().invoke(main, ["check", str(tiny_model_dir), "--baseline", str(unrecorded)])
    assert r.exit_code == 2 and "records no judge" in r.output and "Traceback" not in r.output

    seen = {}

    def fake_eval(cfg, reporter=None):  # what check would evaluate: the baseline's settings, its judge included
        seen["cfg"] = cfg
        return dict(judged, model=cfg.model)

    monkeypatch.setattr(gate, "run_eval", fake_eval)
    recorded = tmp_path / "judged-recorded.json"
    recorded.write_text(json.dumps(dict(judged, config={**base["config"], "judge_url": "http://127.0.0.1:9/v1"})))
    r = CliRunner().invoke(main, ["check", str(tiny_model_dir), "--baseline", str(recorded)])
    assert r.exit_code == 3, r.output  # evaluated like the baseline and compared (10 prompts cannot tell)
    cfg = seen["cfg"]
    assert "judge" in cfg.metrics and cfg.judge_url == "http://127.0.0.1:9/v1" and cfg.limit == base["limit"]
    r = CliRunner().invoke(main, ["check", str(tiny_model_dir), "--baseline", str(unrecorded), "--judge-model", "j.gguf"])
    assert r.exit_code == 3 and seen["cfg"].judge_model == "j.gguf"


def test_reports_of_schema_1_are_still_read_and_newer_ones_refused(eval_report, tmp_path):
    base = json.loads(eval_report[0].read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in base.items() if k not in ("model_sha256", "created", "command_line")}
                              | {"schema_version": 1, "classifier": {"name": "prefix"}}))
    r = CliRunner().invoke(main, ["check", str(old), "--baseline", str(eval_report[0])])
    assert r.exit_code == 3 and "INCONCLUSIVE" in r.output, r.output  # compared (10 prompts cannot tell), not refused
    assert CliRunner().invoke(main, ["compare", str(old), str(eval_report[0])]).exit_code == 0
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(dict(base, schema_version=99)))
    r = CliRunner().invoke(main, ["check", str(newer), "--baseline", str(eval_report[0])])
    assert r.exit_code == 2 and "newer than this safety-audit reads" in r.output


def test_old_classifier_names_still_work(tiny_model_dir, tmp_path):
    out = tmp_path / "e.json"
    r = CliRunner().invoke(main, ["eval", str(tiny_model_dir), "--metrics", "harmful", "--limit", "3", "--classifier",
                                  "prefix", "--max-new-tokens", "2", "--bootstrap", "0", "--json", str(out), "-q"])
    assert r.exit_code == 0 and "now called 'keyword'" in r.output
    rep = json.loads(out.read_text())
    assert rep["classifier"]["name"] == "keyword" and rep["config"]["classifier"] == "keyword"


def test_a_model_is_evaluated_with_the_baselines_settings_and_eval_defaults_for_the_rest(eval_report, monkeypatch):
    """check MODEL: every setting the baseline recorded, EvalConfig's own defaults for what it did not (the
    retyped fallback used to evaluate xstest-safe only, while eval's default is xstest-safe and over-rejection)."""
    from auditor.workflows import gate
    from auditor.workflows.evaluate import EvalConfig

    seen = {}
    monkeypatch.setattr(gate, "run_eval", lambda cfg, reporter=None: seen.setdefault("cfg", cfg))
    base = json.loads(eval_report[0].read_text())
    gate.evaluate_like("some-model", dict(base, config={"metrics": ["harmful", "over-refusal"], "limit": 7}))
    cfg = seen["cfg"]
    assert cfg.limit == 7 and cfg.metrics == ("harmful", "over-refusal")
    assert cfg.over_refusal == EvalConfig().over_refusal and cfg.max_new_tokens == EvalConfig().max_new_tokens
    seen.clear()
    gate.evaluate_like("some-model", base)
    recorded = base["config"]
    assert seen["cfg"].over_refusal == tuple(recorded["over_refusal"]) and seen["cfg"].template == recorded["template"]
