"""How many prompts a gate needs: for a margin m and a rate measured on n prompts per report, which verdict
`check` can reach when nothing changed, paired (both reports answered the same prompts; a share d of the
prompts flip, half each way) and unpaired. Pure arithmetic of core/bootstrap.py's intervals: no model runs.

    python benchmarks/verdict_sizes.py      # prints a table, writes results/verdict_sizes.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from auditor.core.bootstrap import paired_rate_change, rate_change  # noqa: E402
from auditor.core.verdict import decide  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (24, 50, 100, 200, 260, 520, 1000, 2000)


def paired(n: int, rate: float, flips: float) -> list[float]:
    """The change's interval when nothing changed but a share `flips` of the prompts flip, half each way."""
    k, f = round(rate * n), round(flips * n / 2)
    base = [1] * k + [0] * (n - k)
    cand = list(base)
    for i in range(f):  # f answered prompts become refusals, f refused ones become answers
        cand[i], cand[k + i] = 0, 1
    return paired_rate_change(cand, base)["ci95"]


def smallest(fn, margin: float) -> int | None:
    """The smallest n of SIZES whose 'no change' comes out PASS at this margin."""
    for n in SIZES:
        lo, hi = fn(n)
        if decide(0.0, [lo, hi], margin, "increase", n)[0] == "pass":
            return n
    return None


def main() -> None:
    rows = []
    for rate in (0.05, 0.2, 0.5):
        for margin in (0.05, 0.10):
            row = {"rate": rate, "margin": margin,
                   "unpaired": smallest(lambda n: rate_change(round(rate * n), n, round(rate * n), n)["ci95"], margin)}
            for flips in (0.0, 0.05, 0.2):  # a share that can flip both ways at this rate, else not applicable
                possible = flips / 2 <= min(rate, 1 - rate)
                row[f"paired_flips_{flips}"] = smallest(lambda n: paired(n, rate, flips), margin) if possible else "n/a"
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "verdict_sizes.json"
    out.write_text(json.dumps({"command": "python benchmarks/verdict_sizes.py", "sizes_tried": SIZES, "rows": rows}, indent=2) + "\n")
    print("smallest n (of", SIZES, ") at which an unchanged rate is a PASS")
    print(f"{'rate':>5} {'margin':>6} {'unpaired':>9} {'paired, 0 flips':>16} {'5% flip':>8} {'20% flip':>9}")
    for r in rows:
        cells = [r["unpaired"], r["paired_flips_0.0"], r["paired_flips_0.05"], r["paired_flips_0.2"]]
        print(f"{r['rate']:>5} {r['margin']:>6} " + " ".join(f"{str(c or '>2000'):>{w}}" for c, w in zip(cells, (9, 16, 8, 9))))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
