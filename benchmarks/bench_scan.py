"""Hidden-state probing speed on the bundled model, one run, same prompts: our torch path (batched, right
padding, no lm_head), our llama.cpp path (eval callback), and the research code's naive path (one prompt
at a time through generate(max_new_tokens=1, output_hidden_states=True)).

    python benchmarks/bench_scan.py [--prompts 40] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import load_avg, set_threads, write  # noqa: E402

from auditor.backends import open_backend  # noqa: E402
from auditor.io.models import resolve_model  # noqa: E402
from auditor.io.prompts import load_prompts  # noqa: E402


def naive_research_path(tb, queries):
    """What the paper's script does: generate one token per prompt and read output_hidden_states."""
    out = []
    for q in queries:
        ids = torch.tensor([tb.encode(q, "alpaca")])
        with torch.no_grad():
            g = tb.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                                  output_hidden_states=True, return_dict_in_generate=True, pad_token_id=tb.tokenizer.eos_token_id)
        out.append(torch.stack([h[0, -1] for h in g.hidden_states[0][1:]]))
    return torch.stack(out, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    half = args.prompts // 2
    queries = list(load_prompts("normal").prompts[:half]) + list(load_prompts("malicious").prompts[:half])
    model = resolve_model(None)
    tb = open_backend(model, "torch", threads=threads)
    lb = open_backend(model, "llama", threads=threads)
    n_tokens = sum(len(tb.encode(q, "alpaca")) for q in queries)
    load0 = load_avg()
    tb.final_token_states(queries[:4], "alpaca")  # warm-up
    lb.final_token_states(queries[:4], "alpaca")
    naive_research_path(tb, queries[:2])
    timings, states = {}, {}
    for name, fn in (("torch_ours", lambda: tb.final_token_states(queries, "alpaca")),
                     ("llama_cpp_ours", lambda: lb.final_token_states(queries, "alpaca")),
                     ("naive_research_generate", lambda: naive_research_path(tb, queries))):
        t = time.perf_counter()
        states[name] = fn()
        timings[name] = time.perf_counter() - t
    cos = torch.nn.functional.cosine_similarity(states["torch_ours"], states["llama_cpp_ours"], dim=-1)
    naive = states["naive_research_generate"]
    # the naive path's last entry is after the final norm: compare the layers before it
    same = torch.allclose(naive[:-1], states["torch_ours"][:-1], atol=1e-3, rtol=1e-3)
    result = {
        "threads": threads, "prompts": len(queries), "prompt_tokens": n_tokens, "load_before": load0, "load_after": load_avg(),
        "seconds": timings, "prompts_per_s": {k: len(queries) / v for k, v in timings.items()},
        "speedup_torch_vs_naive": timings["naive_research_generate"] / timings["torch_ours"],
        "speedup_llama_vs_naive": timings["naive_research_generate"] / timings["llama_cpp_ours"],
        "min_cosine_torch_vs_llama": float(cos.min()),
        "naive_matches_ours_before_last_layer": bool(same),
    }
    path = write("bench_scan", result)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"scan probing: {len(queries)} prompts, {n_tokens} tokens, {threads} threads (load {load0} → {result['load_after']})")
    for c in ("path", "seconds", "prompts/s", "× naive"):
        t.add_column(c, justify="right")
    for k, v in timings.items():
        t.add_row(k, f"{v:.2f}", f"{len(queries) / v:.1f}", f"{timings['naive_research_generate'] / v:.2f}")
    Console().print(t)
    print(f"min cosine torch vs llama.cpp states: {result['min_cosine_torch_vs_llama']:.5f}; wrote {path}")
    lb.close()


if __name__ == "__main__":
    main()
