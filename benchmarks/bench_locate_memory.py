"""Peak memory of `locate` without --start (it scans first), across the versions that changed how many models
it holds.

7dae101: locate opened its generation backend, then the fresh scan loaded a second copy of the model while the
first was still open. 4d6a07c: the scan's model is freed before the generation backend opens (one at a time,
loaded twice). Since architecture v3: the scan runs on locate's own Target and leaves it loaded for the counts
(one model, loaded once). Each run is a fresh process whose peak RSS is read when it exits; the versions
alternate, REPEAT times each.

    python benchmarks/bench_locate_memory.py [--before REV,REV] [--backend torch|llama] [--repeat 2]
    python benchmarks/bench_locate_memory.py --shape smollm2-1.7b --dtype bfloat16 --repeat 1

--shape builds a random-weight model of a real model's shape (benchmarks/_shapes.py) once, under --models.
A random model's scan may find no initial range; the child then gives locate the middle third of the layers
(SAFETY_AUDIT_BENCH_FILL_RANGE), so the run goes on to its counts: the loads, which are what is measured, are
unchanged by it. Each REV is checked out in a temporary git worktree. Writes
results/bench_locate_memory[-SHAPE].json with the machine's CPU, flags and load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_avg, write  # noqa: E402

from auditor.workflows.doctor import cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import os, resource, sys
from auditor.cli import main
import auditor.workflows.locate as locate
if os.environ.get("SAFETY_AUDIT_BENCH_FILL_RANGE"):
    real_scan = locate.run_scan
    def run_scan(*a, **k):
        r = real_scan(*a, **k)
        n = r["n_layers"]
        return {**r, "initial_range": r["initial_range"] or [n // 3, n // 2]}
    locate.run_scan = run_scan
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mb(source: Path, args: list[str], cache: Path, fill: bool = False) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one run in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(source), "SAFETY_AUDIT_CACHE": str(cache),
           **({"SAFETY_AUDIT_BENCH_FILL_RANGE": "1"} if fill else {})}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, cwd=source)
    seconds = time.perf_counter() - t0
    line = [x for x in p.stdout.splitlines() if x.startswith("PEAK_KB")]
    if p.returncode or not line:
        raise SystemExit(f"locate failed in {source}:\n{p.stdout[-800:]}\n{p.stderr[-1500:]}")
    return int(line[-1].split()[1]) / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="7dae101,4d6a07c", help="earlier versions, comma separated: two models at "
                    "once (7dae101); one at a time, loaded twice (4d6a07c)")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="torch: float32 shows a whole fp32 copy (bf16 halves it)")
    ap.add_argument("--shape", default=None, help="a random-weight model of this shape (benchmarks/_shapes.py)")
    ap.add_argument("--models", default="/tmp/safety-audit-shapes", help="where --shape models are built and kept")
    a = ap.parse_args()
    model = []
    if a.shape:
        from _shapes import build_random_model

        model = [str(build_random_model(a.shape, Path(a.models) / a.shape, a.dtype if a.dtype != "float32" else "bfloat16"))]
    args = ["locate", *model, "--backend", a.backend, *(["--dtype", a.dtype] if a.backend == "torch" else []), "--limit", "4",
            "--classifier", "opening", "--alpha", "1.2", "--patience", "1", "--no-controls", "--threads", "2", "-q"]
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · load {load_avg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"  # the GGUF -> safetensors conversion, once: each run copies it, never its states
        if a.backend == "torch" and not a.shape:
            peak_mb(ROOT, ["scan", "--backend", "torch", "--dtype", a.dtype, "--bootstrap", "0", "--normal", "normal", "--threads", "2", "-q",
                           "--json", str(Path(tmp) / "w.json")], warm)
        revs = [r for r in a.before.split(",") if r]
        sources = {}
        for rev in revs:
            sources[rev] = Path(tmp) / f"at-{rev}"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(sources[rev]), rev], check=True)
        sources["now"] = ROOT
        try:
            runs, walls = {name: [] for name in sources}, {name: [] for name in sources}
            for k in range(a.repeat):
                for name, source in sources.items():
                    cache = Path(tmp) / f"cache-{name}-{k}"  # a fresh cache: the scan really loads its model
                    if (warm / "converted").is_dir():
                        shutil.copytree(warm / "converted", cache / "converted")
                    mb, secs = peak_mb(source, [*args, "--json", str(Path(tmp) / f"{name}-{k}.json")], cache, bool(a.shape))
                    runs[name].append(round(mb, 1))
                    walls[name].append(round(secs, 1))
                    print(f"{name}: peak RSS {mb:.0f} MB, {secs:.0f} s", flush=True)
        finally:
            for rev in revs:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(sources[rev])], check=False)
    now = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"command": "python benchmarks/bench_locate_memory.py " + " ".join(sys.argv[1:]),
              "model": f"random-weight {a.shape} shape (benchmarks/_shapes.py)" if a.shape else "bundled SmolLM2-135M",
              "backend": a.backend, "dtype": a.dtype if a.backend == "torch" else "Q4_1 (GGUF)", "locate_args": args,
              "versions": {**{r: r for r in revs}, "now": f"{now} (and its working tree)"}, "peak_rss_mb": runs,
              "wall_seconds": walls, "cpu": cpu, "load": load_avg()}
    print(json.dumps(result["peak_rss_mb"]))
    print(f"wrote {write('bench_locate_memory' + (f'-{a.shape}' if a.shape else ''), result)}")


if __name__ == "__main__":
    main()
