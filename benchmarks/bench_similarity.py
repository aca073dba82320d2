"""Pair-cosine statistics: fused compiled op vs naive torch vs a research-style Python loop, against the
machine's torch.mm rate on the same data; peak extra memory; GGUF scaled-copy time vs gguf-py.

    python benchmarks/bench_similarity.py [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import child_peak_mb, load_avg, peak_rss_mb, reset_peak_rss, set_threads, timed, write  # noqa: E402

from auditor.ops import compiled as _ext
from auditor.core.similarity import pair_statistics  # noqa: E402


def inputs(K, n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(K, n, d, generator=g), torch.randn(K, m, d, generator=g)
    A[..., 0] += 30
    B[..., 0] += 30  # a dominant dimension like real LLM states
    return A, B


def naive(A, B):
    """Full Gram per layer + arccos + masks: what a straightforward torch implementation does."""
    n, m = A.shape[1], B.shape[1]
    X = torch.nn.functional.normalize(torch.cat([A, B], 1), dim=-1)
    C = torch.bmm(X, X.transpose(1, 2)).clamp_(-1, 1)
    ang = torch.rad2deg(torch.arccos(C))
    up_n = torch.ones(n, n, dtype=torch.bool).triu(1)
    up_m = torch.ones(m, m, dtype=torch.bool).triu(1)
    out = []
    for M in (C, ang):
        out += [M[:, :n, :n][:, up_n].double().mean(1), M[:, n:, n:][:, up_m].double().mean(1), M[:, :n, n:].double().mean((1, 2))]
    return out


def research_loop_seconds(A, B, sample=600):
    """Per-pair Python loop like the paper's script (cosine + arccos per pair); timed on a sample, extrapolated."""
    K, n, m = A.shape[0], A.shape[1], B.shape[1]
    total = K * (n * (n - 1) // 2 + m * (m - 1) // 2 + n * m)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, min(n, m), (sample, 3), generator=g)
    t = time.perf_counter()
    acc = 0.0
    for s in range(sample):
        k, i, j = int(idx[s, 0]) % K, int(idx[s, 1]), int(idx[s, 2])
        c = torch.nn.functional.cosine_similarity(A[k, i], B[k, j], dim=0).item()
        acc += math.degrees(math.acos(max(-1.0, min(1.0, c))))
    return (time.perf_counter() - t) / sample * total


def mm_seconds(A, B):
    X = torch.cat([A, B], 1)

    def run():
        for k in range(X.shape[0]):
            torch.mm(X[k], X[k].T)

    return timed(run)


def shape_row(K, n, m, d, quick):
    A, B = inputs(K, n, m, d)
    useful_flops = 2.0 * d * K * (n * (n - 1) / 2 + m * (m - 1) / 2 + n * m)
    gram_flops = 2.0 * d * K * (n + m) ** 2
    t_fused = timed(lambda: pair_statistics(A, B, impl="compiled"))
    t_torch_tiled = timed(lambda: pair_statistics(A, B, impl="torch"), repeat=1)
    t_naive = timed(lambda: naive(A, B))
    t_mm = mm_seconds(A, B)
    t_loop = research_loop_seconds(A, B, sample=200 if quick else 600)
    here = os.path.abspath(__file__)
    mem = {name: child_peak_mb(here, name, str(K), str(n), str(m), str(d)) for name in ("fused", "naive")}
    mm_rate = gram_flops / t_mm / 1e9
    fused_rate = useful_flops / t_fused / 1e9
    return {
        "shape": {"K": K, "n": n, "m": m, "d": d},
        "seconds": {"fused_compiled": t_fused, "fused_pure_torch_fallback": t_torch_tiled, "naive_torch": t_naive,
                    "research_python_loop_extrapolated": t_loop, "torch_mm_full_gram": t_mm},
        "gflops": {"torch_mm": mm_rate, "fused_useful_pairs": fused_rate},
        "fused_vs_mm_rate": fused_rate / mm_rate,
        "speedup_vs_naive": t_naive / t_fused,
        "speedup_vs_research_loop": t_loop / t_fused,
        "peak_extra_mb": mem,
        "memory_ratio_fused_over_naive": mem["fused"] / mem["naive"] if mem["naive"] > 0 else None,
    }


def gguf_copy_row():
    from auditor.io.gguf_file import read_gguf
    from auditor.io.models import default_model_path
    from auditor.weights.gguf_scaling import _patch, gguf_targets, scale_gguf

    src = default_model_path()
    tmp = tempfile.mkdtemp()
    try:
        t_ours7 = timed(lambda: scale_gguf(src, f"{tmp}/a.gguf", range(8, 15), 1.1, force=True))
        t_ours_all = timed(lambda: scale_gguf(src, f"{tmp}/a.gguf", range(30), 1.1, force=True))
        t_copy = timed(lambda: shutil.copyfile(src, f"{tmp}/c.gguf"))

        def gguf_py():  # the same patch through gguf-py's reader in r+ mode (what ENVIRONMENT.md timed at ~2 s)
            from gguf import GGUFReader

            shutil.copyfile(src, f"{tmp}/b.gguf")
            r = GGUFReader(f"{tmp}/b.gguf", "r+")
            names = {t.name for t in gguf_targets(read_gguf(src), range(8, 15))}
            for t in r.tensors:
                if t.name in names:
                    flat = t.data.reshape(-1).view("uint8")
                    info = type("T", (), {"offset": 0, "n_bytes": flat.size, "type": t.tensor_type, "name": t.name})
                    _patch(flat, info, 1.1)
            r.data.flush()

        t_ggufpy = timed(gguf_py, repeat=1, warmup=0)
    finally:
        shutil.rmtree(tmp)
    return {"model": src.name, "seconds": {"scale_gguf_7_layers": t_ours7, "scale_gguf_all_30_layers": t_ours_all,
                                           "plain_file_copy": t_copy, "gguf_py_reader_r_plus_7_layers": t_ggufpy}}


def memory_child(method, K, n, m, d):
    A, B = inputs(K, n, m, d)
    _ext.load()
    pair_statistics(A[:, :4], B[:, :4], impl="compiled")  # warm: code paths and thread pool
    naive(A[:, :4], B[:, :4])
    base = reset_peak_rss()
    if method == "fused":
        pair_statistics(A, B, impl="compiled")
    else:
        naive(A, B)
    print(max(0.0, peak_rss_mb() - base))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_mem":
        set_threads()
        memory_child(sys.argv[2], *map(int, sys.argv[3:7]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    if not _ext.load():
        sys.exit("compiled core unavailable: " + str(_ext.status()["error"]))
    shapes = [(30, 100, 100, 576), (32, 520, 520, 4096)] if not args.quick else [(30, 100, 100, 576), (8, 520, 520, 4096)]
    result = {"threads": threads, "load_before": load_avg(), "shapes": [shape_row(*s, args.quick) for s in shapes]}
    result["gguf_scaled_copy"] = gguf_copy_row()
    result["load_after"] = load_avg()
    path = write("bench_similarity", result)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"pair statistics ({threads} threads; load {result['load_before']} → {result['load_after']})")
    for c in ("shape K×n×m×d", "fused s", "naive s", "loop s (extrap.)", "mm GFLOP/s", "fused/mm rate", "×naive", "mem fused/naive MB"):
        t.add_column(c, justify="right")
    for r in result["shapes"]:
        s, sec = r["shape"], r["seconds"]
        t.add_row(f"{s['K']}×{s['n']}×{s['m']}×{s['d']}", f"{sec['fused_compiled']:.4f}", f"{sec['naive_torch']:.4f}",
                  f"{sec['research_python_loop_extrapolated']:.1f}", f"{r['gflops']['torch_mm']:.0f}",
                  f"{r['fused_vs_mm_rate']:.0%}", f"{r['speedup_vs_naive']:.2f}",
                  f"{r['peak_extra_mb']['fused']:.1f} / {r['peak_extra_mb']['naive']:.0f}")
    Console(width=150).print(t)
    g = result["gguf_scaled_copy"]["seconds"]
    Console().print(f"GGUF scaled copy (bundled model): 7 layers {g['scale_gguf_7_layers']:.3f} s, all layers "
                    f"{g['scale_gguf_all_30_layers']:.3f} s, plain copy {g['plain_file_copy']:.3f} s, "
                    f"gguf-py r+ {g['gguf_py_reader_r_plus_7_layers']:.2f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
