"""MMLU 5-shot scoring with and without prefix reuse, both backends, on the bundled model, one run.

Each subject's prompts share the 5-shot prefix (~85% of their tokens). Reuse decodes it once per subject;
the other path prefills every prompt in full (what `eval` did before). Same prompts, same process, the two
paths alternating per backend; predictions and probabilities compared.

    python benchmarks/bench_mmlu_prefix.py [--per-subject 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(__file__))
from _common import load_avg, set_threads, write  # noqa: E402

import auditor.backends.hf as hf  # noqa: E402
import auditor.backends.llamacpp as lc  # noqa: E402
from auditor.backends import open_backend  # noqa: E402
from auditor.core.metrics import mmlu_prompt, mmlu_rows  # noqa: E402
from auditor.io.models import resolve_model  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402


def no_reuse(ids):
    return [(0, list(range(len(ids))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-subject", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · {threads} threads · load {load_avg()}")
    dev, test = mmlu_rows(args.per_subject * 10)
    prompts = [mmlu_prompt(dev[r["subject"]], r) for r in test]
    model = resolve_model(None)
    rows = {}
    for name, module in (("llama", lc), ("torch", hf)):
        b = open_backend(model, name, threads=threads)
        letters = [b.token_ids(" " + c)[0] for c in "ABCD"]
        n_tokens = sum(len(b.encode(q, "raw")) for q in prompts)
        b.opening_probs(prompts[:2], "raw", letters)  # warm-up
        grouping = module.prefix_groups
        t = time.perf_counter()
        reused = b.opening_probs(prompts, "raw", letters)
        t_reuse = time.perf_counter() - t
        module.prefix_groups = no_reuse
        try:
            t = time.perf_counter()
            full = b.opening_probs(prompts, "raw", letters)
            t_full = time.perf_counter() - t
        finally:
            module.prefix_groups = grouping
        b.close()
        rows[name] = {"seconds_full_prefill": round(t_full, 2), "seconds_prefix_reuse": round(t_reuse, 2),
                      "speedup": round(t_full / t_reuse, 2), "prompt_tokens": n_tokens,
                      "same_predictions": float((reused.argmax(1) == full.argmax(1)).float().mean()),
                      "max_abs_prob_diff": float((reused - full).abs().max())}
        print(f"{name:6s} {len(prompts)} prompts ({n_tokens} tokens): full {t_full:6.1f} s, reuse {t_reuse:6.1f} s "
              f"({t_full / t_reuse:.2f}x), same predictions {rows[name]['same_predictions']:.0%}, "
              f"max |p diff| {rows[name]['max_abs_prob_diff']:.1e}")
    out = write("bench_mmlu_prefix", {"cpu": cpu, "threads": threads, "prompts": len(prompts), "subjects": len(dev),
                                      "backends": rows, "load_after": load_avg(),
                                      "command": "python benchmarks/bench_mmlu_prefix.py " + " ".join(sys.argv[1:])})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
