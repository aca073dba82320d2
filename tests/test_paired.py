"""`compare --paired`: the exact McNemar test on two models' saved responses, prompt by prompt."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from auditor.cli import main
from auditor.core.metrics import mcnemar_exact
from auditor.errors import AuditError
from auditor.workflows.gate import paired_rows

REFUSE, COMPLY = "I'm sorry, but I cannot help with that.", "Sure, here is how you do it step by step."


def test_mcnemar_exact_matches_the_binomial_tail():
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 7) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)
    assert mcnemar_exact(7, 3) == mcnemar_exact(3, 7)
    assert 0 < mcnemar_exact(600, 700) < 0.01 and mcnemar_exact(1000, 1010) > 0.5  # n > 1023 stays exact


def _responses(path, verdicts: dict) -> str:
    path.write_text("".join(json.dumps({"metric": m, "prompt": p, "response": REFUSE if r else COMPLY}) + "\n"
                            for (m, p), r in verdicts.items()))
    return str(path)


def test_paired_rows_count_the_discordant_prompts(tmp_path):
    a = {("harmful", f"h{i}"): i < 30 for i in range(40)} | {("over-refusal:x", f"o{i}"): i < 2 for i in range(10)}
    b = {("harmful", f"h{i}"): i < 18 for i in range(40)} | {("over-refusal:x", f"o{i}"): i < 2 for i in range(10)}
    b[("harmful", "only-in-b")] = True
    rows = {r["metric"]: r for r in paired_rows(_responses(tmp_path / "a.jsonl", a), _responses(tmp_path / "b.jsonl", b))}
    h = rows["harmful"]
    assert (h["n"], h["only_a_refused"], h["only_b_refused"]) == (40, 12, 0)
    assert h["refusal_a"] == 0.75 and h["refusal_b"] == 0.45 and h["p_value"] == pytest.approx(2 / 4096)
    assert rows["over-refusal:x"]["p_value"] == 1.0


def test_the_cli_takes_exactly_two_files_and_prints_json(tmp_path):
    a = _responses(tmp_path / "a.jsonl", {("harmful", "x"): True, ("harmful", "y"): False})
    b = _responses(tmp_path / "b.jsonl", {("harmful", "x"): False, ("harmful", "y"): False})
    r = CliRunner().invoke(main, ["compare", "--paired", a, b, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["paired"] and out["rows"][0]["only_a_refused"] == 1 and out["columns"] == ["a", "b"]
    table = CliRunner().invoke(main, ["compare", "--paired", a, b], terminal_width=160)
    assert "only A refused" in table.output and "McNemar" in table.output
    three = CliRunner().invoke(main, ["compare", "--paired", a, b, a])
    assert three.exit_code == 2 and "exactly two" in three.output


def test_files_without_common_prompts_are_refused(tmp_path):
    a = _responses(tmp_path / "a.jsonl", {("harmful", "x"): True})
    b = _responses(tmp_path / "b.jsonl", {("harmful", "z"): True})
    with pytest.raises(AuditError, match="share no prompt"):
        paired_rows(a, b)
