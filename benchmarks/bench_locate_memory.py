"""Peak memory of `locate` without --start (it scans first), before and after it stopped holding two models.

Before: locate opened its generation backend, then the fresh scan loaded a second copy of the model while
the first was still open. After: the scan's model is freed before the generation backend opens. Each run is
a fresh process whose peak RSS (VmHWM) is read when it exits; the two versions alternate, REPEAT times each.

    python benchmarks/bench_locate_memory.py [--before REV] [--backend torch|llama] [--repeat 2]

REV is checked out in a temporary git worktree (default: the commit before the change). Writes
results/bench_locate_memory.json with the machine's CPU, flags and load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_avg, write  # noqa: E402

from auditor.workflows.doctor import cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys
from auditor.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mb(source: Path, args: list[str], cache: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source), "SAFETY_AUDIT_CACHE": str(cache)}
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, cwd=source)
    line = [x for x in p.stdout.splitlines() if x.startswith("PEAK_KB")]
    if p.returncode or not line:
        raise SystemExit(f"locate failed in {source}:\n{p.stdout[-800:]}\n{p.stderr[-1500:]}")
    return int(line[-1].split()[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="7dae101", help="the commit before locate freed the scan's model")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="torch: float32 shows a whole fp32 copy (bf16 halves it)")
    a = ap.parse_args()
    args = ["locate", "--backend", a.backend, *(["--dtype", a.dtype] if a.backend == "torch" else []), "--limit", "4", "--classifier", "opening", "--alpha", "1.2",
            "--patience", "1", "--no-controls", "--threads", "2", "-q"]
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · load {load_avg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"  # the GGUF -> safetensors conversion, once: each run copies it, never its states
        if a.backend == "torch":
            peak_mb(ROOT, ["scan", "--backend", "torch", "--dtype", a.dtype, "--bootstrap", "0", "--normal", "normal", "--threads", "2", "-q",
                           "--json", str(Path(tmp) / "w.json")], warm)
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(before), a.before], check=True)
        try:
            runs = {"before": [], "after": []}
            for k in range(a.repeat):
                for name, source in (("before", before), ("after", ROOT)):
                    cache = Path(tmp) / f"cache-{name}-{k}"  # a fresh cache: the scan really loads its model
                    if (warm / "converted").is_dir():
                        shutil.copytree(warm / "converted", cache / "converted")
                    mb = peak_mb(source, [*args, "--json", str(Path(tmp) / f"{name}-{k}.json")], cache)
                    runs[name].append(round(mb, 1))
                    print(f"{name}: peak RSS {mb:.0f} MB", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    result = {"command": "python benchmarks/bench_locate_memory.py " + " ".join(sys.argv[1:]), "model": "bundled SmolLM2-135M",
              "backend": a.backend, "dtype": a.dtype if a.backend == "torch" else "Q4_1 (GGUF)", "locate_args": args, "before_commit": a.before, "peak_rss_mb": runs,
              "cpu": cpu, "load": load_avg()}
    print(json.dumps(result["peak_rss_mb"]))
    print(f"wrote {write('bench_locate_memory', result)}")


if __name__ == "__main__":
    main()
