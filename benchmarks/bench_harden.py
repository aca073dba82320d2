"""harden on the bundled model, one run: seconds per optimizer step and peak memory for full fine-tuning,
SPPFT (7 of 30 layers frozen), LoRA and LoRA-SPPFT. Each configuration runs in its own process (peak RSS
from the kernel's VmHWM); the first step (warm-up) is not timed. The configurations are interleaved over
`--rounds` rounds (full, sppft, lora, lora-sppft, full, ...) and each is summarised by its median, so a
slow spell of this shared machine hits every configuration alike instead of one.

    python benchmarks/bench_harden.py [--steps 6] [--rounds 3] [--threads N]
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


def child(name: str, steps: int, threads: int) -> None:
    from transformers import TrainerCallback

    from auditor.harden import HardenConfig, load_model, run_harden

    set_threads(threads)
    load_model(None)  # make sure the converted copy is cached before measuring
    base = reset_peak_rss()
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as d:
        rep = run_harden(HardenConfig(out=f"{d}/out", max_steps=steps, n_rows=steps * 4, batch_size=4, cutoff=128,
                                      save_steps=10_000, seed=0, threads=threads, **CONFIGS[name]), callbacks=[Clock()])
    timed = times[1:] or times
    print(json.dumps({"s_per_step": sum(timed) / len(timed), "peak_extra_mb": peak_rss_mb() - base,
                      "frozen_fraction": rep["frozen_fraction"], "trainable_parameters_note": "lora" if rep["lora"] else ""}))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    load0 = load_avg()
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name in CONFIGS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", name, str(args.steps), str(threads)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(out.stderr[-2000:])
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    res = {name: {"s_per_step": statistics.median(r["s_per_step"] for r in rs),
                  "peak_extra_mb": statistics.median(r["peak_extra_mb"] for r in rs),
                  "frozen_fraction": rs[0]["frozen_fraction"], "runs": [round(r["s_per_step"], 3) for r in rs]}
           for name, rs in runs.items()}
    full = res["full"]
    result = {"threads": threads, "steps": args.steps, "rounds": args.rounds, "batch": "4 x <=128 tokens",
              "load_before": load0, "load_after": load_avg(), "configs": res,
              "ratios_vs_full": {k: {"time": v["s_per_step"] / full["s_per_step"], "memory": v["peak_extra_mb"] / full["peak_extra_mb"]}
                                 for k, v in res.items()}}
    path = write("bench_harden", result)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"harden on the bundled SmolLM2 ({threads} threads, {args.rounds} rounds × {args.steps} steps, "
                    "batch 4 × ≤128 tokens; medians)")
    for c in ("config", "s/step", "× full", "peak extra MB", "× full", "frozen (base)"):
        t.add_column(c, justify="right")
    for k, v in res.items():
        r = result["ratios_vs_full"][k]
        t.add_row(k, f"{v['s_per_step']:.2f}", f"{r['time']:.2f}", f"{v['peak_extra_mb']:.0f}", f"{r['memory']:.2f}",
                  f"{v['frozen_fraction']:.1%}")
    Console(width=120).print(t)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
