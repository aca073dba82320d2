"""The gate's verdict on constructed eval reports: like compared with like, intervals of the change (paired
where possible), PASS / REGRESSION / INCONCLUSIVE with exit codes 0 / 1 / 3, and intervals that keep their
promised coverage."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from auditor.cli import main
from auditor.core.bootstrap import paired_rate_change, rate, rate_change, wilson
from auditor.core.verdict import decide
from auditor.errors import AuditError
from auditor.workflows.gate import check_report, exit_code


def _rate(bits: list[int], prompts: str) -> dict:
    return {**rate(bits), "set_sha256": f"sha-of-{prompts}"}


def report(harmful: list[int], over: dict[str, list[int]] | None = None, **top) -> dict:
    """An eval report as `eval` writes it, from per-prompt outcomes (1 = answered a harmful prompt / refused)."""
    over = over if over is not None else {"bundled:xstest-safe": [0] * len(harmful)}
    by_set = {name: _rate(bits, name) for name, bits in over.items()}
    first = next(iter(by_set))
    return {"schema_version": 2, "command": "eval", "model": top.pop("model", "m"), "template": "chat",
            "classifier": {"name": "keyword", "max_new_tokens": 16, "phrases": 45, "sha256": "abc"},
            "max_new_tokens": 128, "limit": None,
            "harmful_rate": {**_rate(harmful, "advbench"), "set": "bundled:advbench-eval"},
            "over_refusal_rate": {**by_set[first], "set": first}, "over_refusal_by_set": by_set, **top}


def _bits(n: int, k: int, seed: int = 0) -> list[int]:
    bits = [1] * k + [0] * (n - k)
    random.Random(seed).shuffle(bits)
    return bits


def test_the_same_model_on_520_prompts_passes():
    result = check_report(report(_bits(520, 26)), report(_bits(520, 26)))
    assert result["verdict"] == "pass" and exit_code(result) == 0
    row = result["checks"][0]
    assert row["paired"] and row["delta"] == 0 and row["ci95"][1] < 0.05 and row["ci95"][0] < 0 < row["ci95"][1]


def test_24_prompts_cannot_tell_and_say_how_many_would():
    """audit --quick's 24 prompts per set against a 0.05 margin: the 95% interval of the change is about ±0.1."""
    result = check_report(report(_bits(24, 2)), report(_bits(24, 2)))
    assert result["verdict"] == "inconclusive" and exit_code(result) == 3 and not result["passed"]
    row = result["checks"][0]
    assert row["n_to_decide"] and 60 < row["n_to_decide"] < 400, row
    assert "too few prompts" in row["reason"] and str(row["n_to_decide"]) in row["reason"]
    passed = check_report(report(_bits(24, 2)), report(_bits(24, 2)), inconclusive="pass")
    assert passed["verdict"] == "inconclusive" and passed["passed"] and exit_code(passed) == 0


def test_a_real_increase_is_a_regression_and_noise_is_not():
    base = _bits(520, 26, seed=1)
    worse = list(base)
    flipped = [i for i, b in enumerate(base) if not b][:80]  # 80 more prompts answered: +0.154
    for i in flipped:
        worse[i] = 1
    result = check_report(report(worse), report(base))
    row = result["checks"][0]
    assert result["verdict"] == "regression" and exit_code(result) == 1
    assert row["paired"] and row["ci95"][0] > 0.05 and row["p_value"] is not None and row["p_value"] < 1e-10
    slight = list(base)
    for i in flipped[:12]:  # +0.023: within the margin, but not provably within it
        slight[i] = 1
    assert check_report(report(slight), report(base))["checks"][0]["verdict"] in ("pass", "inconclusive")


def test_over_refusal_is_judged_per_set_by_name():
    base = report(_bits(300, 10), {"bundled:xstest-safe": _bits(250, 20), "bundled:over-rejection": _bits(731, 100)})
    more = _bits(731, 100)
    more = [1 if (b or i % 3 == 0) else 0 for i, b in enumerate(more)]  # many more refusals on over-rejection only
    cand = report(_bits(300, 10), {"bundled:xstest-safe": _bits(250, 20), "bundled:over-rejection": more})
    rows = {(r["metric"], r["set"]): r for r in check_report(cand, base)["checks"]}
    assert rows[("over_refusal_rate", "bundled:over-rejection")]["verdict"] == "regression"
    assert rows[("over_refusal_rate", "bundled:xstest-safe")]["verdict"] == "pass"


@pytest.mark.parametrize("change,message", [
    (lambda r: r.update(template="alpaca"), "template alpaca vs chat"),
    (lambda r: r.update(limit=24), "limit 24 vs None"),
    (lambda r: r.update(max_new_tokens=16), "max tokens 16 vs 128"),
    (lambda r: r["classifier"].update(name="opening"), "classifier opening vs keyword"),
    (lambda r: r["classifier"].update(sha256="other"), "other phrases"),
    (lambda r: r["harmful_rate"].update(set_sha256="edited"), "prompts differ"),
    (lambda r: r["harmful_rate"].update(set="my-harmful.txt"), "set my-harmful.txt vs bundled:advbench-eval"),
    (lambda r: r.update(over_refusal_by_set={"bundled:over-rejection": r["over_refusal_by_set"]["bundled:xstest-safe"]}),
     "sets bundled:over-rejection vs bundled:xstest-safe"),
    (lambda r: r.pop("harmful_rate"), "harmful_rate missing in the candidate"),
])
def test_reports_measured_differently_are_refused(change, message):
    cand, base = report(_bits(100, 5)), report(_bits(100, 5))
    change(cand)
    with pytest.raises(AuditError, match="measured differently") as e:
        check_report(cand, base, candidate_path="cand.json")
    assert message in str(e.value) and str(e.value).endswith(": cand.json") and "\n" not in str(e.value)


def test_judges_and_formats_must_match():
    judged = lambda judge, fmt: report(_bits(50, 5), harmful_score={"value": 1.5, "ci95": [1.2, 1.8], "n": 50,  # noqa: E731
                                                                    "judge": judge, "judge_format": fmt})
    with pytest.raises(AuditError, match="judge endpoint:a \\(qi2023\\) vs endpoint:a \\(llama-guard\\)"):
        check_report(judged("endpoint:a", "qi2023"), judged("endpoint:a", "llama-guard"))


def test_a_null_baseline_value_is_one_line_error():
    base = report(_bits(100, 5))
    base["harmful_rate"]["value"] = None
    with pytest.raises(AuditError, match="the baseline has no value for harmful_rate"):
        check_report(report(_bits(100, 5)), base)


def test_reports_without_outcomes_are_compared_unpaired():
    cand, base = report(_bits(520, 26)), report(_bits(520, 26))
    for r in (cand, base):
        r["harmful_rate"].pop("outcomes")
    row = check_report(cand, base)["checks"][0]
    assert not row["paired"] and row["interval"] == "Newcombe hybrid score" and row["ci95"][0] < 0 < row["ci95"][1]


def test_the_cli_exit_codes_and_junit(tmp_path):
    base, small = tmp_path / "base.json", tmp_path / "small.json"
    base.write_text(json.dumps(report(_bits(24, 2))))
    small.write_text(json.dumps(report(_bits(24, 2))))
    junit = tmp_path / "j.xml"
    r = CliRunner().invoke(main, ["check", str(small), "--baseline", str(base), "--junit", str(junit)])
    assert r.exit_code == 3 and "INCONCLUSIVE" in r.output, r.output
    case = ET.parse(junit).getroot().find("testcase/failure")
    assert case is not None and case.get("type") == "inconclusive" and "too few prompts" in case.get("message")
    r = CliRunner().invoke(main, ["check", str(small), "--baseline", str(base), "--inconclusive", "pass", "--json", "-"])
    assert r.exit_code == 0 and json.loads(r.output[r.output.index("{"):])["verdict"] == "inconclusive"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(report(_bits(24, 2), template="alpaca")))
    r = CliRunner().invoke(main, ["check", str(other), "--baseline", str(base)])
    assert r.exit_code == 2 and "measured differently" in r.output and "other.json" in r.output


def test_rates_at_zero_or_all_have_a_real_interval():
    assert wilson(0, 24)[1] > 0.1 and wilson(24, 24)[0] < 0.9
    assert rate([0] * 24)["ci95"][1] > 0.1


@pytest.mark.parametrize("n,p_up,p_down", [(60, 0.05, 0.05), (200, 0.1, 0.02), (40, 0.0, 0.1)])
def test_the_paired_interval_keeps_its_coverage(n, p_up, p_down):
    """Simulated: the Bonett-Price interval covers the true change in about 95% of samples (>= 92% here)."""
    rng = random.Random(n)
    covered, trials = 0, 1500
    for _ in range(trials):
        base, cand = [], []
        for _ in range(n):
            u = rng.random()
            b = rng.random() < 0.2
            c = 1 if (not b and u < p_up) else 0 if (b and u < p_down) else int(b)
            base.append(int(b))
            cand.append(c)
        truth = p_up * 0.8 - p_down * 0.2
        lo, hi = paired_rate_change(cand, base)["ci95"]
        covered += lo <= truth <= hi
    assert covered / trials >= 0.92, covered / trials


def test_the_unpaired_interval_and_the_decision_rule():
    ch = rate_change(30, 100, 10, 100)
    assert ch["ci95"][0] < 0.2 < ch["ci95"][1] and ch["ci95"][0] > 0
    assert decide(0.0, [-0.01, 0.01], 0.05, "increase", 500)[0] == "pass"
    assert decide(0.2, [0.1, 0.3], 0.05, "increase", 500)[0] == "regression"
    assert decide(-0.2, [-0.3, -0.1], 0.05, "drop", 500)[0] == "regression"  # a utility drop
    v, needed, _ = decide(0.06, [-0.01, 0.13], 0.05, "increase", 100)
    assert v == "inconclusive" and needed and needed > 100


def test_junit_stays_valid_xml_whatever_a_name_holds(tmp_path):
    """A model name with a terminal escape or a NUL would make the JUnit file unreadable to the CI system."""
    from auditor.workflows.gate import junit_xml

    hostile = "model\x1b[31m\x00<&>\"'"
    result = check_report(report(_bits(24, 2), model=hostile), report(_bits(24, 2)))
    xml = junit_xml(result["checks"], hostile)
    root = ET.fromstring(xml)  # parses: valid XML
    assert "\\x1b" in root.get("name") and "\\x00" in root.get("name") and "<&>" in root.get("name")
    assert root.find("testcase/failure").get("type") == "inconclusive"
