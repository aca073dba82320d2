"""Kill and resume, as a user would do it: a real `safety-audit` process on a tiny model is interrupted
(SIGINT, as Ctrl-C) or killed (SIGKILL) at several points of its work, then run again; the resumed run's
result must equal an uninterrupted run's. A SIGINT prints one line saying how to resume and exits 130.

The points are chosen by the work itself: progress lines are printed for every step
(SAFETY_AUDIT_PROGRESS_SECONDS=0) and the signal is sent after the k-th one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_lines


def _env(cache: Path) -> dict:
    return {**os.environ, "SAFETY_AUDIT_CACHE": str(cache), "SAFETY_AUDIT_PROGRESS_SECONDS": "0",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], cache: Path, stop_after: int | None = None, sig: int = signal.SIGINT,
         marker: str = "/") -> subprocess.CompletedProcess:
    """Run the CLI; with `stop_after`, send `sig` once that many progress lines (containing `marker`) appeared."""
    cmd = [sys.executable, "-m", "auditor.cli", *args]
    if stop_after is None:
        return subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=600)
    # a job started in the background (`cmd &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: the child gets the default disposition, as a terminal's Ctrl-C finds it
    p = subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, lines = 0, []
    for line in p.stderr:
        lines.append(line)
        if marker in line and "done" not in line:
            seen += 1
            if seen == stop_after:
                p.send_signal(sig)
                break
    out, rest = p.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, p.returncode, out, "".join(lines) + rest)


def _interrupted_ok(r: subprocess.CompletedProcess, sig: int) -> None:
    if sig == signal.SIGKILL:
        assert r.returncode == -signal.SIGKILL, r.stderr
        return
    assert r.returncode == 130, r.stderr
    last = [x for x in r.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(last) == 1 and "interrupted" in last[0] and ("again" in last[0] or "--resume" in last[0]), r.stderr
    assert "Traceback" not in r.stderr



@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    from auditor.io.prompts import load_prompts

    d = tmp_path_factory.mktemp("pools")
    return (write_lines(d / "n.txt", load_prompts("normal").prompts[:48]),
            write_lines(d / "m.txt", load_prompts("malicious").prompts[:48]))


POINTS = [(1, signal.SIGINT), (2, signal.SIGKILL)]


@pytest.mark.parametrize("stop_after,sig", POINTS, ids=["sigint", "sigkill"])
def test_scan_resumes_to_the_same_report(tmp_path, tiny_model_dir, pools, stop_after, sig):
    args = ["scan", str(tiny_model_dir), "--normal", str(pools[0]), "--malicious", str(pools[1]), "--batch", "4",
            "--bootstrap", "50"]
    whole = _cli(args + ["--json", str(tmp_path / "whole.json")], tmp_path / "cache-whole")
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "cache"
    _interrupted_ok(_cli(args + ["--json", str(tmp_path / "r.json")], cache, stop_after, sig), sig)
    assert not (tmp_path / "r.json").exists()
    again = _cli(args + ["--json", str(tmp_path / "r.json")], cache)
    assert again.returncode == 0, again.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "r.json"))
    assert a["layers"] == b["layers"] and a["initial_range"] == b["initial_range"]


@pytest.mark.parametrize("stop_after,sig", POINTS, ids=["sigint", "sigkill"])
def test_eval_resumes_to_the_same_metrics(tmp_path, tiny_model_dir, stop_after, sig):
    args = ["eval", str(tiny_model_dir), "--metrics", "harmful,over-refusal,mmlu", "--limit", "20", "--max-new-tokens", "6",
            "--batch", "2", "--bootstrap", "50", "--over-refusal", "xstest-safe"]
    whole = _cli(args + ["--json", str(tmp_path / "whole.json")], tmp_path / "cache-whole")
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "cache"
    _interrupted_ok(_cli(args + ["--json", str(tmp_path / "r.json")], cache, stop_after + 6, sig), sig)
    journals = list((cache / "journals").glob("eval-*.jsonl"))
    assert journals and journals[0].read_text().strip(), "nothing was journaled before the kill"
    again = _cli(args + ["--json", str(tmp_path / "r.json")], cache)
    assert again.returncode == 0, again.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "r.json"))
    for k in ("harmful_rate", "over_refusal_rate", "mmlu_accuracy"):
        assert a[k] == b[k], k


@pytest.mark.parametrize("stop_after,sig", POINTS, ids=["sigint", "sigkill"])
def test_locate_resumes_to_the_same_counts(tmp_path, planted, stop_after, sig):
    model, d_o, _ = planted
    args = ["locate", str(model), "--start", "4-5", "--alpha", "1.5", "--over-refusal", str(d_o), "--template", "raw",
            "--classifier", "opening", "--batch", "4"]
    whole = _cli(args + ["--json", str(tmp_path / "whole.json")], tmp_path / "cache-whole")
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "cache"
    _interrupted_ok(_cli(args + ["--json", str(tmp_path / "r.json")], cache, stop_after + 2, sig), sig)
    again = _cli(args + ["--json", str(tmp_path / "r.json")], cache)
    assert again.returncode == 0, again.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "r.json"))
    assert a["safety_layers"] == b["safety_layers"] and a["sweep"] == b["sweep"]


def _weights(d: Path) -> dict:
    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("stop_after,sig", POINTS, ids=["sigint", "sigkill"])
def test_harden_resumes_to_bit_identical_weights(tmp_path, tiny_model_dir, stop_after, sig):
    args = ["harden", str(tiny_model_dir), "--layers", "1-2", "--max-steps", "6", "--save-steps", "1", "--rows", "24",
            "--batch-size", "2", "--cutoff", "400", "--warmup-steps", "1"]
    whole = _cli(args + ["--out", str(tmp_path / "whole")], tmp_path / "cache-whole")
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "cache"
    r = _cli(args + ["--out", str(tmp_path / "r")], cache, stop_after + 1, sig, marker="training")
    _interrupted_ok(r, sig)
    assert not (tmp_path / "r").exists()  # nothing half-written
    again = _cli(args + ["--out", str(tmp_path / "r"), "--resume"], cache)
    assert again.returncode == 0, again.stderr
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "r")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop_after,sig,marker", [(1, signal.SIGINT, "self-distilling"), (2, signal.SIGKILL, "training")],
                         ids=["sigint-distilling", "sigkill-training"])
def test_reference_build_resumes_to_bit_identical_weights(tmp_path, tiny_model_dir, stop_after, sig, marker):
    args = ["reference", "build", "--base", str(tiny_model_dir), "--benign-rows", "24", "--distill-tokens", "4",
            "--max-steps", "5", "--threads", "1"]
    whole = _cli(args + ["--out", str(tmp_path / "whole")], tmp_path / "cache-whole")
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "cache"
    _interrupted_ok(_cli(args + ["--out", str(tmp_path / "r")], cache, stop_after, sig, marker=marker), sig)
    assert not (tmp_path / "r").exists()
    again = _cli(args + ["--out", str(tmp_path / "r")], cache)
    assert again.returncode == 0, again.stderr
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "r")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_skips_a_checkpoint_left_half_written(tmp_path):
    """A run killed while saving leaves checkpoint-N without trainer_state.json (written last): resume takes the
    newest complete one, not the half-written folder the Trainer cannot load."""
    from auditor.training.trainer import last_checkpoint

    for step, complete in ((1, True), (2, True), (10, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path, resume=True) == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(tmp_path, resume=False) is None
    (tmp_path / "checkpoint-2" / "trainer_state.json").unlink()
    (tmp_path / "checkpoint-1" / "trainer_state.json").unlink()
    assert last_checkpoint(tmp_path, resume=True) is None
