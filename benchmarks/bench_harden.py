"""harden on the bundled model, one run: seconds per optimizer step and peak memory for full fine-tuning,
SPPFT (7 of 30 layers frozen), LoRA and LoRA-SPPFT.

Lock-step, so the ratios survive a shared, noisy machine: the four configurations run as four processes
at once, but only one of them computes at any moment. The parent hands out steps round-robin (full step 1,
sppft step 1, lora step 1, lora-sppft step 1, full step 2, ...); each child times its own step (Trainer's
step-begin to step-end: forward, backward, clipping, AdamW) and waits for its turn otherwise. A slow spell
of the machine therefore hits all four within seconds of each other, and each configuration is summarised
by the median of its steps. The first step of each (warm-up) is not timed. Peak memory is each process's
own kernel high-water mark (VmHWM) above its RSS once the model was loaded.

    python benchmarks/bench_harden.py [--steps 10] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import load_avg, peak_rss_mb, reset_peak_rss, set_threads, write  # noqa: E402

CONFIGS = {"full": dict(method="full"), "sppft": dict(method="sppft", layers=(8, 14)),
           "lora": dict(method="full", lora=True), "lora-sppft": dict(method="sppft", layers=(8, 14), lora=True)}
TAG = "@@bench "  # protocol lines on the child's stdout; anything else there is ignored


def _say(obj) -> None:
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def child(name: str, steps: int, threads: int) -> None:
    """One configuration: waits for 'go' on stdin before each step, reports each step's time."""
    from transformers import TrainerCallback

    from auditor.backends.hf_loading import load_causal_lm
    from auditor.io.models import resolve_model
    from auditor.workflows.harden import HardenConfig, run_harden

    set_threads(threads)
    load_causal_lm(resolve_model(None))  # make sure the converted copy is cached before measuring
    base = reset_peak_rss()
    walls, cpus = [], []

    class Gate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sys.stdin.readline()
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            walls.append(time.perf_counter() - self.t)
            cpus.append(time.process_time() - self.c)
            if len(walls) < steps + 1:
                _say({"step": len(walls)})
                return
            _say({"wall": walls[1:], "cpu": cpus[1:], "peak_extra_mb": peak_rss_mb() - base})
            sys.stdin.readline()  # stay alive (and idle) until every configuration is done
            os._exit(0)

    with tempfile.TemporaryDirectory() as d:
        run_harden(HardenConfig(out=f"{d}/out", max_steps=steps + 1, n_rows=(steps + 1) * 4, batch_size=4, cutoff=128,
                                save_steps=10_000, seed=0, threads=threads, **CONFIGS[name]), callbacks=[Gate()])


def _frozen_fractions() -> dict[str, float]:
    """Per configuration: the frozen block's share of the base model's parameters (LoRA: of the base weights)."""
    from auditor.weights.layers import block_parameters
    from auditor.backends.hf_loading import load_causal_lm
    from auditor.io.models import resolve_model

    model, _ = load_causal_lm(resolve_model(None))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values())
    fractions = {}
    for name, cfg in CONFIGS.items():
        layers = cfg.get("layers")
        block = block_parameters(model, range(layers[0], layers[1] + 1)) if layers else []
        fractions[name] = sum(sizes[n] for n in block) / total
    return fractions


def _read(proc, name: str, log: str) -> dict:
    for line in proc.stdout:
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    with open(log) as f:
        sys.exit(f"{name} failed:\n{f.read()[-2000:]}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    load0 = load_avg()
    logs = tempfile.TemporaryDirectory()
    procs = {}
    for name in CONFIGS:
        log = os.path.join(logs.name, f"{name}.log")
        procs[name] = (subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_child", name, str(args.steps), str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True), log)
    results = {}
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        for name, (p, log) in procs.items():
            p.stdin.write("go\n")
            p.stdin.flush()
            msg = _read(p, name, log)
            if step == args.steps:
                results[name] = msg
    for p, _ in procs.values():
        p.stdin.write("exit\n")
        p.stdin.flush()
        p.wait()
    wall = time.perf_counter() - t0
    frozen = _frozen_fractions()
    res = {name: {"s_per_step": statistics.median(r["wall"]), "cpu_s_per_step": statistics.median(r["cpu"]),
                  "peak_extra_mb": r["peak_extra_mb"], "frozen_fraction": frozen[name],
                  "steps_s": [round(x, 3) for x in r["wall"]]} for name, r in results.items()}
    full = res["full"]
    # per-round ratio: step k of a configuration against step k of full, run seconds apart
    paired = {k: statistics.median(a / b for a, b in zip(v["steps_s"], full["steps_s"])) for k, v in res.items()}
    result = {"threads": threads, "steps": args.steps, "batch": "4 x <=128 tokens", "schedule": "lock-step round-robin",
              "load_before": load0, "load_after": load_avg(), "seconds": round(wall, 1), "configs": res,
              "ratios_vs_full": {k: {"time": v["s_per_step"] / full["s_per_step"], "time_paired": paired[k],
                                     "cpu_time": v["cpu_s_per_step"] / full["cpu_s_per_step"],
                                     "memory": v["peak_extra_mb"] / full["peak_extra_mb"]} for k, v in res.items()}}
    path = write("bench_harden", result)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"harden on the bundled SmolLM2 ({threads} threads, lock-step, {args.steps} steps each, "
                    "batch 4 × ≤128 tokens; medians)")
    for c in ("config", "s/step", "× full", "× full (paired)", "× full (CPU s)", "peak extra MB", "× full", "frozen"):
        t.add_column(c, justify="right")
    for k, v in res.items():
        r = result["ratios_vs_full"][k]
        t.add_row(k, f"{v['s_per_step']:.2f}", f"{r['time']:.2f}", f"{r['time_paired']:.2f}", f"{r['cpu_time']:.2f}",
                  f"{v['peak_extra_mb']:.0f}", f"{r['memory']:.2f}", f"{v['frozen_fraction']:.1%}")
    Console(width=130).print(t)
    print(f"load average {load0} -> {result['load_after']}; wrote {path}")


if __name__ == "__main__":
    main()
