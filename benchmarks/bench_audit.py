"""`audit --quick` on the bundled model, as a new user meets it: a cold cache, end to end; then the same
audit killed (SIGINT) in a chosen step and re-run, which must finish with the same reports.

    python benchmarks/bench_audit.py [--kill-in eval] [--model MODEL]

Writes benchmarks/results/bench_audit.json: wall times, the steps' states, and whether every report of the
resumed audit equals the uninterrupted one's (volatile fields aside: created, command_line, seconds).
Never beside another heavy process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_avg, write  # noqa: E402

from auditor.workflows.doctor import cpu_info  # noqa: E402

VOLATILE = ("created", "command_line", "seconds")


def _cmd(model: str | None, out: Path) -> list[str]:
    return [sys.executable, "-m", "auditor.cli", "audit", *([model] if model else []), "--out", str(out), "--quick"]


def _env(cache: Path) -> dict:
    return {**os.environ, "SAFETY_AUDIT_CACHE": str(cache), "SAFETY_AUDIT_PROGRESS_SECONDS": "5", "PYTHONUNBUFFERED": "1"}


def _default_sigint() -> None:
    """A job started in the background (`cmd &`) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: give the child the default disposition, as a terminal's Ctrl-C would find it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _strip(report: dict, folder: Path) -> dict:
    """Without the fields that differ between any two runs: times, and the folder's own path."""
    text = json.dumps({k: v for k, v in report.items() if k not in VOLATILE}).replace(str(folder), "DIR")
    return json.loads(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="MODEL (default: the bundled one)")
    ap.add_argument("--kill-in", default="eval", help="Step to interrupt (scan, locate, eval, attention)")
    args = ap.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · load {load_avg()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))

    t0 = time.perf_counter()
    whole = subprocess.run(_cmd(args.model, tmp / "whole"), env=_env(tmp / "cache-whole"), capture_output=True, text=True)
    t_whole = time.perf_counter() - t0
    print(f"uninterrupted: exit {whole.returncode}, {t_whole:.0f} s", flush=True)
    if whole.returncode not in (0, 1):
        raise SystemExit(whole.stderr[-2000:])

    t0 = time.perf_counter()
    p = subprocess.Popen(_cmd(args.model, tmp / "killed"), env=_env(tmp / "cache-killed"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    seen, sent, lines = False, False, []
    for line in p.stderr:
        lines.append(line.rstrip())
        if f"audit: {args.kill_in}" in line:
            seen = True
        elif seen and "/" in line:  # the step's first progress line: it is working
            p.send_signal(signal.SIGINT)
            sent = True
            break
    lines += p.communicate(timeout=600)[1].splitlines()
    if not sent:
        raise SystemExit(f"never saw step {args.kill_in} working; its output ended:\n" + "\n".join(lines[-15:]))
    t_killed = time.perf_counter() - t0
    t0 = time.perf_counter()
    resumed = subprocess.run(_cmd(args.model, tmp / "killed"), env=_env(tmp / "cache-killed"), capture_output=True, text=True)
    t_resumed = time.perf_counter() - t0
    print(f"killed in {args.kill_in} after {t_killed:.0f} s (exit {p.returncode}); re-run: exit {resumed.returncode}, "
          f"{t_resumed:.0f} s", flush=True)

    same = {}
    for f in sorted((tmp / "whole").glob("*.json")):
        if f.name == "audit.json":
            continue
        other = tmp / "killed" / f.name
        same[f.name] = other.is_file() and (_strip(json.loads(f.read_text()), tmp / "whole")
                                            == _strip(json.loads(other.read_text()), tmp / "killed"))
    state = json.loads((tmp / "whole" / "audit.json").read_text())["steps"]
    print(f"steps: {state}\nresumed reports equal the uninterrupted ones: {same}", flush=True)
    scan = json.loads((tmp / "whole" / "scan.json").read_text())
    loc = tmp / "whole" / "locate.json"
    out = write("bench_audit", {
        "command": "python benchmarks/bench_audit.py " + " ".join(sys.argv[1:]), "cpu": cpu, "load_before": load_avg(),
        "model": scan["model"], "quick": True, "seconds_uninterrupted": round(t_whole, 1), "exit_code": whole.returncode,
        "steps": state, "initial_range": scan["initial_range"],
        "safety_layers": json.loads(loc.read_text())["safety_layers"] if loc.is_file() else None,
        "kill": {"step": args.kill_in, "signal": "SIGINT", "exit_code": p.returncode, "last_line": lines[-1], "seconds_before_kill": round(t_killed, 1),
                 "seconds_to_finish_after": round(t_resumed, 1), "resumed_exit_code": resumed.returncode},
        "resumed_reports_equal": same, "page_bytes": (tmp / "whole" / "report.html").stat().st_size,
        "folder": str(tmp)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
