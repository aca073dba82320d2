"""Which MKL kernel choice gives which bits, per CPU: why a reference build does not carry over between vendors.

A reference build is a training run: one differently rounded GEMM changes its weights, so the study's cells only
pair with a rebuild that picked the same kernels. torch's fp32 GEMM is MKL's, which chooses its kernels by CPU
(AVX-512 ones on Intel CPUs that have them, others on AMD). This runs the same seeded forward and backward GEMMs
(SmolLM2's shapes) in a fresh process under each MKL setting and keeps the SHA-256 of the results per CPU in one
file, so a run on another machine says whether any setting here gives the bits that machine's default gives.

    python benchmarks/study/gemm_paths.py         # prints, adds this CPU to benchmarks/study/results/gemm_paths.json
    python benchmarks/study/gemm_paths.py --time  # also what each setting costs: the same GEMMs' time, as ratios to the default

Without --time, seconds and no timing: safe beside other work. It also names the settings that round alike on two
CPUs (MKL_CBWR=COMPATIBLE on the AMD EPYC and the Intel Xeon seen so far): a way to a build that carries over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common

from study_builds import cpu_id  # noqa: E402

from auditor.workflows.doctor import cpu_info  # noqa: E402

SETTINGS = {"default": {}, "MKL_ENABLE_INSTRUCTIONS=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
            "MKL_ENABLE_INSTRUCTIONS=AVX512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}, "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
            "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"}}
SHAPES = [(37, 576, 576), (37, 576, 1536), (37, 1536, 576), (1536, 576, 1536), (5, 576, 49152)]  # tokens, in, out

SETUP = f"""
import sys, torch
torch.manual_seed(0); torch.set_num_threads(2)
work = [(torch.randn(m, k, requires_grad=True), torch.nn.Linear(k, n)) for m, k, n in {SHAPES!r}]
"""
PROBE = SETUP + """
import hashlib
h = hashlib.sha256()
for x, lin in work:
    y = lin(x); y.sum().backward()
    for t in (y, x.grad, lin.weight.grad):
        h.update(t.detach().numpy().tobytes())
print(hashlib.sha256(h.digest()).hexdigest())
"""
TIMER = SETUP + f"""
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from _common import timed
print(timed(lambda: [lin(x).sum().backward() for x, lin in work], repeat=5))
"""


def _run(code: str, extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")} | {"ATEN_CPU_CAPABILITY": "avx2", **extra}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def digest(extra: dict) -> str:
    return _run(PROBE, extra)


def cost(rounds: int = 3) -> dict:
    """Seconds of the GEMMs per setting, interleaved over rounds (this machine is shared and noisy): the median time and
    the median ratio to the default's in the same round."""
    times = {name: [] for name in SETTINGS}
    for _ in range(rounds):
        for name, extra in SETTINGS.items():
            times[name].append(float(_run(TIMER, extra)))
    return {name: {"seconds": round(median(ts), 4),
                   "ratio_to_default": round(median(t / d for t, d in zip(ts, times["default"])), 3)} for name, ts in times.items()}


def main() -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", action="store_true", help="Also time each setting (alone on the machine: a benchmark).")
    args = ap.parse_args()
    cpu = cpu_info()
    digests = {name: digest(extra) for name, extra in SETTINGS.items()}
    p = Path(__file__).resolve().parent / "results" / "gemm_paths.json"
    known = json.loads(p.read_text()) if p.is_file() else {"benchmark": "gemm_paths", "shapes": SHAPES, "cpus": {}}
    ident = cpu_id()  # every AMD machine of this kind is "AMD EPYC": family, model and stepping tell them apart
    key = f"{cpu['model']} ({' '.join(cpu['flags'])})" + "".join(
        f" {k} {ident[k]}" for k in ("cpu family", "model", "stepping") if k in ident)
    prev = known["cpus"].get(key, {}).get("cost")  # a timing made before: kept unless timed again
    known["cpus"][key] = {"cpu": cpu, "cpu_id": ident, "torch": torch.__version__, "mkl": torch.backends.mkl.is_available(),
                          "sha256": digests}
    if args.time or prev:
        known["cpus"][key]["cost"] = cost() if args.time else prev
    print(f"CPU {key}, torch {torch.__version__}")
    for name, d in digests.items():
        c = known["cpus"][key].get("cost", {}).get(name)
        print(f"  {name:32s} {d[:16]}" + (f"  {c['seconds'] * 1000:7.1f} ms  ×{c['ratio_to_default']:.2f}" if c else ""))
    for other, rec in known["cpus"].items():
        if other != key:
            same = [n for n, d in digests.items() if d == rec["sha256"]["default"]]
            print(f"{other}'s default kernels: {'given here by ' + ', '.join(same) if same else 'no setting here gives its bits'}")
            both = [n for n, d in digests.items() if d == rec["sha256"].get(n)]  # a setting that rounds alike on both CPUs
            print(f"  the same bits there and here: {', '.join(both) if both else 'no setting'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(known, indent=2) + "\n")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
