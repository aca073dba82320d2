"""Generation speed on the bundled model: our llama.cpp path (continuous batching, and --batch 1), llama-cpp-python's
own high-level API one prompt at a time (what a user would write), and our torch path; tokens/s and prompts/s.

Ratios are taken in one run, round-robin: every configuration runs once per round, so a slow spell of the
machine hits all alike; the median of the rounds is reported. Threads are explicit. Prints the CPU model and
flags with the figures and writes benchmarks/results/bench_generate.json.

    python benchmarks/bench_generate.py [--prompts 32] [--tokens 64] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_avg, set_threads, write  # noqa: E402

from auditor.backends import open_backend  # noqa: E402
from auditor.io.models import resolve_model  # noqa: E402
from auditor.io.prompts import load_prompts  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402


def high_level_api(path: Path, threads: int):
    """llama-cpp-python's Llama + create_chat_completion, greedy, one prompt at a time."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(prompts, tokens):
        n = 0
        for q in prompts:
            out = llm.create_chat_completion([{"role": "user", "content": q}], max_tokens=tokens, temperature=0.0)
            n += out["usage"]["completion_tokens"]
        return n

    return run


def ours(backend, batch: int | None):
    def run(prompts, tokens):
        backend.batch_size = batch
        return sum(g.n_tokens for g in backend.complete(prompts, "chat", tokens))

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,4,8,16,32,64", help="llama.cpp batch sizes to sweep")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    ref = resolve_model(None)
    prompts = list(load_prompts("over-rejection").prompts[: args.prompts])
    llama = open_backend(ref, "llama", threads=threads)
    torch_backend = open_backend(ref, "torch", threads=threads)
    configs = {"llama-cpp-python high-level, one at a time": high_level_api(ref.path, threads)}
    for b in (int(x) for x in args.batches.split(",")):
        configs[f"ours llama.cpp, batch {b}"] = ours(llama, b)
    configs["ours torch fp32, batched"] = ours(torch_backend, None)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags: {', '.join(cpu['flags'])} · {threads} threads · load {load_avg()}")
    times: dict[str, list[float]] = {k: [] for k in configs}
    tokens: dict[str, int] = {}
    for r in range(args.rounds):
        for name, run in configs.items():
            t = time.perf_counter()
            tokens[name] = run(prompts, args.tokens)
            times[name].append(time.perf_counter() - t)
            print(f"round {r + 1} · {name}: {times[name][-1]:.1f} s, {tokens[name]} tokens", flush=True)
    base = "llama-cpp-python high-level, one at a time"
    rows = {}
    for name in configs:
        sec = statistics.median(times[name])
        rows[name] = {"seconds": round(sec, 2), "tokens": tokens[name], "tokens_per_s": round(tokens[name] / sec, 1),
                      "prompts_per_s": round(len(prompts) / sec, 2)}
    for name, row in rows.items():
        row["speed_vs_high_level_api"] = round(row["tokens_per_s"] / rows[base]["tokens_per_s"], 2)
        print(f"{name:45s} {row['tokens_per_s']:7.1f} tok/s  {row['prompts_per_s']:5.2f} prompts/s  "
              f"{row['speed_vs_high_level_api']:.2f}x the high-level API")
    out = write("bench_generate", {"cpu": cpu, "threads": threads, "prompts": len(prompts), "max_new_tokens": args.tokens,
                                   "rounds": args.rounds, "load_avg_end": load_avg(), "results": rows,
                                   "model": ref.label, "command": " ".join(sys.argv)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
