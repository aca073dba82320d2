"""Two processes at once on the same model and cache directory: both finish with correct results (atomic
cache chunks, whole journal lines); two `harden` runs into one --out: one wins, the other fails cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from test_resume import _env, pools  # noqa: F401  (fixtures; `planted` comes from conftest)


def _both(args_a: list[str], args_b: list[str], cache) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "auditor.cli", *a], env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in (args_a, args_b)]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return out


def test_two_scans_share_a_cache(tmp_path, tiny_model_dir, pools):  # noqa: F811
    base = ["scan", str(tiny_model_dir), "--normal", str(pools[0]), "--malicious", str(pools[1]), "--batch", "4",
            "--bootstrap", "20"]
    a, b = _both(base + ["--json", str(tmp_path / "a.json")], base + ["--json", str(tmp_path / "b.json")], tmp_path / "c")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    alone = subprocess.run([sys.executable, "-m", "auditor.cli", *base, "--json", str(tmp_path / "alone.json")],
                           env=_env(tmp_path / "fresh"), capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    ra, rb, r0 = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json", "alone.json"))
    assert ra["layers"] == rb["layers"] == r0["layers"]


def test_two_locates_share_a_journal(tmp_path, planted):
    model, d_o, _ = planted
    base = ["locate", str(model), "--start", "4-5", "--alpha", "1.5", "--over-refusal", str(d_o), "--template", "raw",
            "--classifier", "opening", "--batch", "4"]
    a, b = _both(base + ["--json", "-"], base + ["--json", "-"], tmp_path / "c")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["sweep"] == rb["sweep"] and ra["safety_layers"] == rb["safety_layers"]
    journal = next((tmp_path / "c" / "journals").glob("locate-*.jsonl")).read_text().splitlines()
    assert all(json.loads(line)["count"] >= 0 for line in journal)  # every line whole


def test_two_hardens_into_one_output_one_wins(tmp_path, tiny_model_dir):
    out = tmp_path / "model"
    args = ["harden", str(tiny_model_dir), "--layers", "1-2", "--max-steps", "30", "--rows", "16", "--batch-size", "2",
            "--cutoff", "400", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "auditor.cli", *args], env=_env(tmp_path / "c"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # the first is training: it holds the output
            if "training" in line:
                break
        first.send_signal(signal.SIGSTOP)  # held mid-training, lock taken: however fast this machine trains
        second = subprocess.run([sys.executable, "-m", "auditor.cli", *args], env=_env(tmp_path / "c"),
                                capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr
        assert "another harden is writing" in second.stderr and str(out) in second.stderr
        assert len(second.stderr.strip().splitlines()) <= 2 and "Traceback" not in second.stderr
        first.send_signal(signal.SIGCONT)
        first.stderr.read()
        assert first.wait(timeout=600) == 0
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
    assert (out / "safety_audit.json").is_file()
    assert not list(tmp_path.glob(".model.*"))  # no lock or temp folder left behind
