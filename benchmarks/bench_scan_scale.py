"""Scan statistics at scale: the default scan's pair statistics plus its prompt bootstrap, on random states of
the bundled model's shape (30 layers x 576), at sizes where v0.1's pair matrices do not fit.

Each measurement runs in a fresh child process that builds the states, resets the kernel's peak-RSS mark,
runs the step and prints the extra peak RSS. At a small size the v0.1 way (full [K,n,n]/[K,n,m] pair
matrices, then weighted einsums over them) runs too, so the ratio and the equality of the numbers come
from one run; at 10k + 10k only the tiled path can run (v0.1 would need ~36 GB: computed, not run).

    python benchmarks/bench_scan_scale.py [--n 10000] [--bootstrap 1000] [--small 1500] [--layers 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import load_avg, peak_rss_mb, reset_peak_rss, set_threads, write  # noqa: E402

from auditor.core.gap import bootstrap_weights, gap_stats  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402

D = 576


def states(K: int, n: int, seed: int) -> torch.Tensor:
    """Random states with a shared direction per layer (cosines spread like real ones), built layer by layer."""
    g = torch.Generator().manual_seed(seed)
    X = torch.empty(K, n, D)
    for k in range(K):
        X[k].normal_(generator=g)
        X[k, :, k % D] += 4.0
    return X


def v01_way(A, B, weights):
    """v0.1: full pair matrices from the kernel, then dense weighted pair means (float64) for the replicates."""
    from auditor.core.similarity import pair_statistics

    ps = pair_statistics(A, B, return_pairs=True)
    wn, wm = (w.double() for w in weights)

    def wmean(values, mask, w1, w2):
        v = torch.rad2deg(torch.acos(values.double().clamp(-1, 1))) * mask
        num = (torch.einsum("kij,bj->kib", v, w2) * w1.T[None]).sum(1)
        return num / ((mask @ w2.T) * w1.T).sum(0)

    n, m = A.shape[1], B.shape[1]
    reps = (wmean(ps.pairs_ab, torch.ones(n, m, dtype=torch.float64), wn, wm)
            - wmean(ps.pairs_aa, torch.ones(n, n, dtype=torch.float64).triu(1), wn, wn)).T
    return ps.angle_ab - ps.angle_aa, reps


def child(method: str, K: int, n: int, R: int) -> None:
    A, B = states(K, n, 1), states(K, n, 2)
    weights = bootstrap_weights(n, n, R, seed=0)
    gap_stats(A[:1, :64], B[:1, :64], None, bootstrap_weights(64, 64, 2, 0))  # warm: extension, thread pool
    base = reset_peak_rss()
    t = time.perf_counter()
    if method == "tiled":
        gs = gap_stats(A, B, None, weights)
        gap, reps = gs.gap, gs.replicates
    else:
        gap, reps = v01_way(A, B, weights)
    seconds = time.perf_counter() - t
    print(json.dumps({"extra_peak_mb": max(0.0, peak_rss_mb() - base), "seconds": seconds,
                      "states_mb": 2 * A.numel() * 4 / 2**20, "gap": gap.tolist(), "replicates_head": reps[:5].tolist()}))


def run_child(method: str, K: int, n: int, R: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_child", method, str(K), str(n), str(R)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        set_threads()
        child(sys.argv[2], *map(int, sys.argv[3:6]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000, help="normal and malicious prompts each, at scale")
    ap.add_argument("--small", type=int, default=1_500, help="prompts each where v0.1's way still fits")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    threads = set_threads()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · {threads} threads · load {load_avg()}")
    K, R = args.layers, args.bootstrap
    small = {m: run_child(m, K, args.small, R) for m in ("v0.1", "tiled")}
    gap_diff = max(abs(a - b) for a, b in zip(small["v0.1"]["gap"], small["tiled"]["gap"]))
    rep_diff = max(abs(a - b) for ra, rb in zip(small["v0.1"]["replicates_head"], small["tiled"]["replicates_head"])
                   for a, b in zip(ra, rb))
    for m, r in small.items():
        print(f"{args.small}+{args.small}, {R} replicates, {m:5s}: {r['seconds']:7.2f} s, extra peak {r['extra_peak_mb']:8.0f} MB")
    print(f"  same numbers: max |gap diff| {gap_diff:.2e} deg, max |replicate diff| {rep_diff:.2e} deg")
    big = run_child("tiled", K, args.n, R)
    v01_gb = K * (2 * args.n * args.n + args.n * args.n) * (4 + 8) / 2**30  # float32 pairs + float64 copies
    print(f"{args.n}+{args.n}, {R} replicates, tiled: {big['seconds']:.1f} s, extra peak {big['extra_peak_mb']:.0f} MB "
          f"(states themselves {big['states_mb']:.0f} MB; v0.1 would need ~{v01_gb:.0f} GB)")
    for r in (*small.values(), big):
        r.pop("gap"), r.pop("replicates_head")
    out = write("bench_scan_scale", {
        "cpu": cpu, "threads": threads, "layers": K, "hidden": D, "bootstrap": R, "load_after": load_avg(),
        "small": {"prompts_each": args.small, **small, "max_abs_gap_diff_deg": gap_diff, "max_abs_replicate_diff_deg": rep_diff,
                  "memory_ratio_v01_over_tiled": small["v0.1"]["extra_peak_mb"] / max(1.0, small["tiled"]["extra_peak_mb"])},
        "large": {"prompts_each": args.n, "tiled": big, "v01_estimated_gb": v01_gb, "target_extra_gb": 4.0,
                  "meets_target": big["extra_peak_mb"] / 1024 <= 4.0},
        "command": "python benchmarks/bench_scan_scale.py " + " ".join(sys.argv[1:])})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
