"""Which MKL kernel choice gives which bits, per CPU: why a reference build does not carry over between vendors.

A reference build is a training run: one differently rounded GEMM changes its weights, so the study's cells only
pair with a rebuild that picked the same kernels. torch's fp32 GEMM is MKL's, which chooses its kernels by CPU
(AVX-512 ones on Intel CPUs that have them, others on AMD). This runs the same seeded forward and backward GEMMs
(SmolLM2's shapes) in a fresh process under each MKL setting and keeps the SHA-256 of the results per CPU in one
file, so a run on another machine says whether any setting here gives the bits that machine's default gives.

    python benchmarks/gemm_paths.py    # prints, adds this CPU to benchmarks/results/study/gemm_paths.json

Seconds, not a timing: safe beside other work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

from auditor.workflows.doctor import cpu_info  # noqa: E402

SETTINGS = {"default": {}, "MKL_ENABLE_INSTRUCTIONS=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
            "MKL_ENABLE_INSTRUCTIONS=AVX512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}, "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
            "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"}}
SHAPES = [(37, 576, 576), (37, 576, 1536), (37, 1536, 576), (1536, 576, 1536), (5, 576, 49152)]  # tokens, in, out

PROBE = f"""
import hashlib, torch
torch.manual_seed(0); torch.set_num_threads(2)
h = hashlib.sha256()
for m, k, n in {SHAPES!r}:
    x = torch.randn(m, k, requires_grad=True); lin = torch.nn.Linear(k, n)
    y = lin(x); y.sum().backward()
    for t in (y, x.grad, lin.weight.grad):
        h.update(t.detach().numpy().tobytes())
print(hashlib.sha256(h.digest()).hexdigest())
"""


def digest(extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")} | {"ATEN_CPU_CAPABILITY": "avx2", **extra}
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    import torch

    cpu = cpu_info()
    digests = {name: digest(extra) for name, extra in SETTINGS.items()}
    p = RESULTS / "study" / "gemm_paths.json"
    known = json.loads(p.read_text()) if p.is_file() else {"benchmark": "gemm_paths", "shapes": SHAPES, "cpus": {}}
    key = f"{cpu['model']} ({' '.join(cpu['flags'])})"
    known["cpus"][key] = {"cpu": cpu, "torch": torch.__version__, "mkl": torch.backends.mkl.is_available(), "sha256": digests}
    print(f"CPU {key}, torch {torch.__version__}")
    for name, d in digests.items():
        print(f"  {name:32s} {d[:16]}")
    for other, rec in known["cpus"].items():
        if other != key:
            same = [n for n, d in digests.items() if d == rec["sha256"]["default"]]
            print(f"{other}'s default kernels: {'given here by ' + ', '.join(same) if same else 'no setting here gives its bits'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(known, indent=2) + "\n")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
