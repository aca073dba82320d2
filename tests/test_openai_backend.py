"""`--backend openai` against a real llama_cpp.server on 127.0.0.1: eval through the server, the commands
that need more than text refused up front, a server that dies mid-run (one line, exit 2, responses kept)."""

import json

import pytest
from click.testing import CliRunner

from auditor.backends.openai import OpenAIBackend
from auditor.cli import main
from auditor.errors import AuditError
from auditor.io.models import remote_model
from conftest import free_port, serve

pytestmark = pytest.mark.model


def run(args):
    return CliRunner().invoke(main, args)


def test_commands_that_need_states_or_scaling_refuse_a_server_up_front():
    for args, what in ((["scan", "--backend", "openai"], "hidden-states"),
                       (["locate", "--backend", "openai", "--start", "1-2"], "weight-scaling"),
                       (["eval", "--backend", "openai", "--base-url", "http://127.0.0.1:9"], "next-token")):
        r = run(args)
        assert r.exit_code == 2 and f"no {what} capability" in r.output and "Traceback" not in r.output, r.output
    r = run(["eval", "--backend", "openai", "--metrics", "harmful"])
    assert r.exit_code == 2 and "needs --base-url" in r.output
    r = run(["eval", "--base-url", "http://127.0.0.1:9", "--metrics", "harmful"])
    assert r.exit_code == 2 and "go with --backend openai" in r.output


def test_a_server_that_is_down_is_one_line():
    b = OpenAIBackend(remote_model(f"http://127.0.0.1:{free_port()}", "x"), retries=2, backoff=0.01, timeout=2)
    with pytest.raises(AuditError, match="unreachable after 2 tries"):
        b.complete(["hi"], "chat", 4)


def test_eval_through_a_real_server_and_a_server_that_dies_mid_run(bundled_gguf, tmp_path, monkeypatch):
    with serve(bundled_gguf) as (url, proc):
        out, saved = tmp_path / "e.json", tmp_path / "r.jsonl"
        r = run(["eval", "--backend", "openai", "--base-url", url + "/v1", "--model", "smol", "--metrics",
                 "harmful,over-refusal", "--over-refusal", "xstest-safe", "--limit", "4", "--max-new-tokens", "8",
                 "--batch", "2", "--bootstrap", "0", "--json", str(out), "--save-responses", str(saved), "-q"])
        assert r.exit_code == 0, r.output
        rep = json.loads(out.read_text())
        assert rep["backend"] == "openai" and rep["model_sha256"] is None and rep["template"] == "chat"
        assert rep["harmful_rate"]["n"] == 4 and rep["config"]["base_url"] == url + "/v1"
        rows = [json.loads(x) for x in saved.read_text().splitlines()]
        assert len(rows) == 16 and all(0 < x["n_tokens"] <= 8 for x in rows)  # 4 per harmful set (3) and 4 over-refusal

        calls = []
        original = OpenAIBackend._one

        def dies_after_three(self, *a, **k):  # the real server answers three times, then is killed
            if len(calls) == 3:
                proc.kill()
                proc.wait()
            calls.append(1)
            return original(self, *a, **k)

        monkeypatch.setattr(OpenAIBackend, "_one", dies_after_three)
        partial = tmp_path / "partial.jsonl"
        r = run(["eval", "--backend", "openai", "--base-url", url, "--metrics", "harmful", "--limit", "200",
                 "--max-new-tokens", "4", "--batch", "1", "--save-responses", str(partial), "-q"])
    assert r.exit_code == 2 and "unreachable after 3 tries" in r.output and "Traceback" not in r.output
    assert "re-run with --responses" in r.output
    kept = [json.loads(x) for x in partial.read_text().splitlines()]
    assert len(kept) >= 2 and all(x["metric"] == "harmful" and x["response"] for x in kept)  # every finished chunk
