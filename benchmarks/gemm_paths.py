"""Does torch's fp32 GEMM give the same bits under MKL's kernel choices on this CPU? (why study.py pins them)

A reference build is a training run: one differently rounded GEMM changes its weights, so the study's cells only
pair when every machine picks the same kernels. MKL chooses by CPU (AVX-512 kernels on Intel CPUs that have it,
AVX2 ones on AMD); this runs the same seeded forward and backward GEMMs (SmolLM2's shapes) in a fresh process
under each MKL setting and compares the SHA-256 of the results.

    python benchmarks/gemm_paths.py    # prints, writes benchmarks/results/study/gemm_paths.json

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
            "MKL_ENABLE_INSTRUCTIONS=AVX512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}, "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"}}
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

    digests = {name: digest(extra) for name, extra in SETTINGS.items()}
    out = {"benchmark": "gemm_paths", "cpu": cpu_info(), "torch": torch.__version__,
           "mkl": torch.backends.mkl.is_available(), "shapes": SHAPES, "sha256": digests,
           "default_is_avx2": digests["default"] == digests["MKL_ENABLE_INSTRUCTIONS=AVX2"]}
    print(f"CPU {out['cpu']['model']} {' '.join(out['cpu']['flags'])}, torch {out['torch']}")
    for name, d in digests.items():
        print(f"  {name:32s} {d[:16]}")
    print("default kernels round as the AVX2 ones" if out["default_is_avx2"] else "default kernels round differently from AVX2's")
    p = RESULTS / "study" / "gemm_paths.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
