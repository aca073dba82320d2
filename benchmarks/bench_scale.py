"""The cost model's measurements: time and peak memory of each part of the method on random-weight models of real
shapes (benchmarks/_shapes.py), on torch (fp32, bf16) and on llama.cpp (GGUF F16, Q8_0).

    python benchmarks/bench_scale.py [--shapes smollm2-135m,qwen2.5-0.5b,llama-3.2-1b]
                                     [--configs torch-fp32,torch-bf16,llama-f16,llama-q8_0] [--threads 2]

Parts, each in a fresh process (its peak RSS is the process's high-water mark):
- load: open the backend;
- scan: final-token states of the bundled 100 normal + 100 malicious prompts (the forward passes of a scan);
- count: one locate count: the middle third of the layers scaled by 1.2, the `opening` classifier on the first
  150 D_o (over-rejection) prompts;
- eval: 16 AdvBench-eval prompts answered with 64 greedy tokens (no early stop);
- harden (torch fp32 only): 2 optimizer steps of full fine-tuning, SPPFT (middle third frozen) and SPPFT as LoRA,
  batch 4, rows cut at 256 tokens.
Finished measurements are kept in results/bench_scale.json and skipped when the script runs again; a part that
runs out of memory is recorded as such. Models are built once under --models. docs/costs.md is generated from
the result file by benchmarks/cost_model.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, load_avg  # noqa: E402
from _shapes import SHAPES, build_random_gguf, build_random_model, parameters  # noqa: E402

OUT = RESULTS / "bench_scale.json"
PARTS = ("load", "scan", "count", "eval", "harden-full", "harden-sppft", "harden-lora")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))


def child(model: str, config: str, part: str, threads: int, layers: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from auditor.backends import open_backend
    from auditor.core.refusal import make_classifier
    from auditor.io.models import resolve_model
    from auditor.io.prompts import load_prompts

    torch.set_num_threads(threads)
    mid = range(layers // 3, 2 * layers // 3)
    if part.startswith("harden"):
        from auditor.workflows.harden import HardenConfig, run_harden

        out = Path(os.environ["BENCH_TMP"]) / f"h-{os.getpid()}"
        kw = {"harden-full": {"method": "full"}, "harden-sppft": {"method": "sppft", "layers": (mid[0], mid[-1])},
              "harden-lora": {"method": "sppft", "layers": (mid[0], mid[-1]), "lora": True}}[part]
        t0 = time.perf_counter()
        rep = run_harden(HardenConfig(out=str(out), model=model, n_rows=8, max_steps=2, batch_size=4, cutoff=256,
                                      save_steps=100, threads=threads, **kw))
        return {"seconds": time.perf_counter() - t0, "train_loss": rep["train_loss"], "steps": rep["steps"],
                "peak_mb": _peak_mb()}
    backend_name, dtype = config.split("-", 1)
    kw = {"threads": threads} | ({"dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype]} if backend_name == "torch" else {})
    t0 = time.perf_counter()
    b = open_backend(resolve_model(model), "torch" if backend_name == "torch" else "llama", **kw)
    loaded = time.perf_counter() - t0
    result = {"load_seconds": loaded}
    t0 = time.perf_counter()
    if part == "scan":
        for name in ("normal", "malicious"):
            b.final_token_states(list(load_prompts(name).prompts), "alpaca")
        result["prompts"] = 200
    elif part == "count":
        prompts = list(load_prompts("over-rejection").prompts[:150])
        with b.scaled(mid, 1.2):
            result["refusals"] = sum(make_classifier("opening").decide(b, prompts, "alpaca"))
        result["prompts"] = 150
    elif part == "eval":
        texts = b.generate(list(load_prompts("advbench-eval").prompts[:16]), "alpaca", 64)
        result["prompts"], result["tokens"] = 16, 64
        result["answer_chars"] = sum(map(len, texts))
    result["seconds"] = time.perf_counter() - t0
    b.close()
    result["peak_mb"] = _peak_mb()
    return result


def model_path(shape: str, config: str, models: Path) -> str:
    if config.startswith("llama"):
        q = config.split("-", 1)[1]
        return str(build_random_gguf(shape, models / f"{shape}.{q}.gguf", q))
    return str(build_random_model(shape, models / shape, "bfloat16"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="smollm2-135m,qwen2.5-0.5b,llama-3.2-1b")
    ap.add_argument("--configs", default="torch-fp32,torch-bf16,llama-f16,llama-q8_0")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="/tmp/safety-audit-shapes")
    ap.add_argument("--_child", nargs=5, metavar=("MODEL", "CONFIG", "PART", "THREADS", "LAYERS"))
    a = ap.parse_args()
    if a._child:
        m, c, p, t, k = a._child
        print("RESULT " + json.dumps(child(m, c, p, int(t), int(k))))
        return
    from auditor.workflows.doctor import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · load {load_avg()}", flush=True)
    data = json.loads(OUT.read_text()) if OUT.exists() else {"runs": {}}
    data |= {"command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]), "cpu": cpu, "threads": a.threads}
    from importlib.metadata import version

    data["versions"] = {p: version(p) for p in ("torch", "transformers", "llama_cpp_python", "peft")}
    models = Path(a.models)
    for shape in a.shapes.split(","):
        for config in a.configs.split(","):
            for part in a.parts.split(","):
                if part.startswith("harden") and config != "torch-fp32":
                    continue  # training runs in fp32 on torch
                key = f"{shape}|{config}|{part}"
                if key in data["runs"]:
                    continue
                path = model_path(shape, config, models)
                env = {**os.environ, "BENCH_TMP": str(models), "SAFETY_AUDIT_CACHE": str(models / "cache")}
                proc = subprocess.run([sys.executable, __file__, "--_child", path, config, part, str(a.threads),
                                       str(SHAPES[shape][2])], capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if line:
                    run = json.loads(line[-1][7:])
                else:  # killed (out of memory) or failed: recorded, not retried
                    run = {"failed": proc.returncode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][-300:]}
                run |= {"shape": shape, "config": config, "part": part, "parameters": parameters(shape),
                        "load": load_avg()}
                data["runs"][key] = run
                OUT.write_text(json.dumps(data, indent=1))
                print(key, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in run.items()
                            if k in ("seconds", "load_seconds", "peak_mb", "failed", "error")}, flush=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
