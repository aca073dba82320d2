"""Do batched generation and early stopping change refusal verdicts? On the bundled model: the first N D_o
prompts and 100 AdvBench-eval prompts (chat template, 16 greedy tokens), one prompt at a time vs batched, on llama.cpp and torch; the
share of identical texts and of equal verdicts for both classifiers, with and without early stop. Writes
benchmarks/results/bench_numerics.json.

    python benchmarks/bench_numerics.py [--prompts 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_avg, set_threads, write  # noqa: E402

from auditor.backends import open_backend  # noqa: E402
from auditor.core.refusal import KeywordClassifier, OpeningClassifier  # noqa: E402
from auditor.io.models import resolve_model  # noqa: E402
from auditor.io.prompts import load_prompts  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402


def agree(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    # D_o alone: the unaligned bundled model refuses none of it; AdvBench-eval brings the refusals it does write
    prompts = list(load_prompts("over-rejection").prompts[: args.prompts]) + list(load_prompts("advbench-eval").prompts[:100])
    ref, kw, op = resolve_model(None), KeywordClassifier(16), OpeningClassifier()
    print(f"CPU: {cpu_info()['model']} · flags {cpu_info()['flags']} · {threads} threads · load {load_avg()}")
    results = {}
    for name, batched in (("llama", 32), ("torch", None)):
        b = open_backend(ref, name, threads=threads)
        b.batch_size = 1
        one = b.complete(prompts, "chat", 16)
        b.batch_size = batched
        many = b.complete(prompts, "chat", 16)
        early = {c.name: b.generate(prompts, "chat", 16, stop=c.decided) for c in (kw, op)}
        b.close()
        row = {"identical_texts": agree([g.text for g in one], [g.text for g in many])}
        for c in (kw, op):
            single = [c.is_refusal(g.text) for g in one]
            row[f"{c.name}_verdicts_batched_vs_single"] = agree(single, [c.is_refusal(g.text) for g in many])
            row[f"{c.name}_verdicts_early_stop_vs_single"] = agree(single, [c.is_refusal(t) for t in early[c.name]])
            row[f"{c.name}_refusals_single"] = sum(single)
        results[name] = row
        print(name, row, flush=True)
    out = write("bench_numerics", {"cpu": cpu_info(), "threads": threads, "prompts": len(prompts), "max_new_tokens": 16,
                                   "template": "chat", "llama_batch": 32, "results": results, "load_avg_end": load_avg(),
                                   "command": " ".join(sys.argv)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
