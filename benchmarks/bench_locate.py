"""locate on the bundled model, one run: a full sweep with the `probe` classifier vs with 16-token greedy
generation (`prefix`), the Spearman agreement of the two classifiers' counts over the same ranges, and
their per-prompt agreement.

    python benchmarks/bench_locate.py [--model reference --start 17-21 --alpha 1.15] [--backend torch|llama]
                                      [--limit 150] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import load_avg, set_threads, write  # noqa: E402

from auditor.workflows.locate import LocateConfig, run_locate  # noqa: E402
from auditor.backends import open_backend  # noqa: E402
from auditor.io.models import resolve_model  # noqa: E402
from auditor.io.prompts import load_prompts  # noqa: E402
from auditor.core.agreement import agreement  # noqa: E402
from auditor.core.refusal import KeywordClassifier, OpeningClassifier  # noqa: E402


def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else None  # undefined when one side is constant


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the bundled model ('reference': the aligned one)")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--template", default="chat")
    ap.add_argument("--alpha", type=float, default=1.1)
    ap.add_argument("--start", default="8-8", help="the scan's initial range on the bundled model")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    start = tuple(int(x) for x in args.start.split("-"))
    load0 = load_avg()
    sweeps = {}
    for clf in ("opening", "keyword"):
        t = time.perf_counter()
        sweeps[clf] = run_locate(LocateConfig(model=args.model, backend=args.backend, template=args.template, limit=args.limit, classifier=clf,
                                              alpha=args.alpha, start=start, threads=threads))
        sweeps[clf]["wall_seconds"] = time.perf_counter() - t
    # both classifiers on the same ranges: the union of both sweeps' ranges
    model = resolve_model(args.model)
    b = open_backend(model, args.backend, threads=threads)
    d_o = list(load_prompts("over-rejection").prompts[: args.limit])
    known = {c: {tuple(r["range"]): r["count"] for r in sweeps[c]["sweep"] + sweeps[c]["controls"]} for c in sweeps}
    ranges = sorted(set(known["opening"]) | set(known["keyword"]))
    clfs = {"opening": OpeningClassifier(), "keyword": KeywordClassifier(16)}
    for c in sweeps:
        for rng in ranges:
            if rng not in known[c]:
                with b.scaled(range(rng[0], rng[1] + 1), args.alpha):
                    known[c][rng] = sum(clfs[c].decide(b, d_o, args.template))
    rho = spearman([known["opening"][r] for r in ranges], [known["keyword"][r] for r in ranges])
    # per-prompt agreement at baseline, on D_o and on AdvBench (where some refusals exist)
    per_prompt = {}
    for name, qs in (("over_rejection", d_o), ("advbench_first_100", list(load_prompts("advbench").prompts[:100]))):
        per_prompt[name] = agreement(clfs["keyword"].decide(b, qs, args.template), clfs["opening"].decide(b, qs, args.template))
    b.close()
    result = {
        "model": model.label, "backend": args.backend, "threads": threads, "template": args.template, "alpha": args.alpha, "start": list(start),
        "n_prompts": args.limit, "load_before": load0, "load_after": load_avg(),
        "sweep_seconds": {c: round(sweeps[c]["wall_seconds"], 1) for c in sweeps},
        "counts_computed": {c: sweeps[c]["counts_computed"] for c in sweeps},
        "speedup_opening_vs_keyword": sweeps["keyword"]["wall_seconds"] / sweeps["opening"]["wall_seconds"],
        "safety_layers": {c: sweeps[c]["safety_layers"] for c in sweeps},
        "baseline": {c: sweeps[c]["baseline"] for c in sweeps},
        "counts_by_range": {f"{r[0]}-{r[1]}": {c: known[c][r] for c in known} for r in ranges},
        "spearman_probe_vs_prefix": rho,
        "per_prompt_agreement": per_prompt,
    }
    path = write(f"bench_locate_{args.backend}" + (f"_{os.path.basename(args.model).split('.')[0]}" if args.model else ""), result)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"locate sweep on {model.label} ({args.backend}, {args.limit} D_o prompts, α {args.alpha}, {threads} threads)")
    for c in ("classifier", "sweep s", "counts", "s/count", "baseline", "safety layers"):
        t.add_column(c, justify="right")
    for c in sweeps:
        t.add_row(c, f"{sweeps[c]['wall_seconds']:.0f}", str(sweeps[c]["counts_computed"]),
                  f"{sweeps[c]['wall_seconds'] / max(1, sweeps[c]['counts_computed']):.1f}", str(sweeps[c]["baseline"]),
                  str(sweeps[c]["safety_layers"]))
    Console(width=140).print(t)
    print(f"Spearman(probe, prefix) over {len(ranges)} ranges: {rho}; per-prompt agreement: {per_prompt}; wrote {path}")


if __name__ == "__main__":
    main()
