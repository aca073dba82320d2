"""Does a located range's scaling lift over-refusal only, or every refusal? (r5's localization, issue 38)

r5 refuses over half of D_o unscaled, so `locate` scales *down* (α 0.8) and keeps the range with the fewest D_o
refusals. That objective has a blunt minimum: scale enough of the model down and it stops refusing anything. This
script counts, for the unscaled model and each range given, the D_o prompts refused and the AdvBench-eval
prompts refused (the same counter `locate` uses: greedy 16 tokens, the opening classifier, chat template): a range
where safety lives lowers over-refusal and keeps harmful refusals; a blunt one lowers both.

    python benchmarks/study/scaled_refusals.py --ranges 24-27,0-14 --alpha 0.8 --json OUT.json

Counts are journaled beside OUT (a killed run resumes). Never beside another heavy process (2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from auditor.backends import GENERATION, WEIGHT_SCALING  # noqa: E402
from auditor.core.refusal import make_classifier  # noqa: E402
from auditor.io.config import parse_ranges  # noqa: E402
from auditor.io.files import write_json  # noqa: E402
from auditor.io.prompts import load_prompts  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402
from auditor.workflows.locate import CountJournal, LocateConfig, RefusalCounter, count_key  # noqa: E402
from auditor.workflows.options import Target  # noqa: E402
from auditor.workflows.reporting import Silent  # noqa: E402

SETS = ("over-rejection", "advbench-eval")  # D_o; harmful requests a safe model refuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--ranges", required=True, help="Comma-separated inclusive ranges, e.g. 24-27,0-14.")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    ranges = [None, *parse_ranges(args.ranges, "--ranges")]
    out, t0, result = Path(args.json), time.perf_counter(), {}
    cfg = LocateConfig(model=args.model, backend="torch", dtype="float32", template="chat", classifier="opening", limit=0)
    classifier = make_classifier(cfg.classifier, cfg.max_new_tokens)
    with Target.resolve(cfg, (GENERATION, WEIGHT_SCALING)) as target:
        backend = target.backend()
        backend.prepare_scaling()
        for name in SETS:
            prompts = list(load_prompts(name).prompts)
            key = count_key(cfg, target, classifier, prompts)
            journal = CountJournal(out.with_name(out.name + f".{name}.journal.jsonl"), key)
            count = RefusalCounter(backend, prompts, classifier, cfg.template, True, journal, Silent())
            for rng in ranges:
                label = "unscaled" if rng is None else f"{rng[0]}-{rng[1]}"
                n = count(rng, args.alpha)
                result.setdefault(label, {})[name] = {"refused": n, "of": len(prompts)}
                print(f"{label:>9} {name:>15}: {n} of {len(prompts)} refused", flush=True)
        sha = target.sha256
    write_json(out, {"model": args.model, "model_sha256": sha, "alpha": args.alpha, "classifier": classifier.describe(),
                     "max_new_tokens": cfg.max_new_tokens, "template": cfg.template, "counts": result,
                     "command": " ".join(["python", "benchmarks/study/scaled_refusals.py", *sys.argv[1:]]),
                     "cpu": cpu_info(), "seconds": round(time.perf_counter() - t0, 1)}, force=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
