"""Intervals for the verdict: a rate, a mean, and the change between two reports, paired when both measured
the same prompts (docs/verdicts.md).

Why these and not one bootstrap for everything: a bootstrap of 0/24 refusals resamples only zeros and
reports a CI of zero width, and a gate then "knows" a rate it measured on 24 prompts exactly. Rates get
Wilson score intervals (never zero width, good coverage at small n and at 0 or n); the change of a rate
between two reports gets the Bonett–Price adjusted Wald interval when the same prompts were answered by
both (paired: only the prompts whose verdict changed carry information), else Newcombe's hybrid score
interval from the two Wilson intervals. Means (a judge's score, Rouge-L, KL) get a seeded percentile
bootstrap, paired over items when both reports carry the same items.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .metrics import mcnemar_exact

Z95 = 1.959963984540054


# Resampling. Two generators, on purpose: the scan's replicates (torch) and locate's resampled D_o (numpy) are
# recorded in reports and caches; one generator for both would change every recorded interval.

def scan_resamples(n: int, m: int, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan's bootstrap: [B, n] and [B, m] multinomial counts of the normal and malicious prompts drawn in
    each of B replicates (one torch generator, normal first)."""
    g = torch.Generator().manual_seed(seed)
    wn = torch.multinomial(torch.ones(n), n * B, replacement=True, generator=g).view(B, n)
    wm = torch.multinomial(torch.ones(m), m * B, replacement=True, generator=g).view(B, m)
    count = lambda idx, size: torch.zeros(B, size).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
    return count(wn, n), count(wm, m)


def prompt_resamples(n: int, replicates: int, seed: int) -> np.ndarray:
    """locate's bootstrap of D_o: [replicates, n] multinomial counts, how often each prompt is drawn in each
    resample of n prompts."""
    rng = np.random.default_rng(seed)
    w = np.zeros((replicates, n), dtype=np.int32)
    for r in range(replicates):
        w[r] = np.bincount(rng.integers(0, n, n), minlength=n)
    return w


def percentile_ci(replicates: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, the 2.5th and 97.5th percentiles of the replicates (the point itself below 2 replicates)."""
    if replicates.shape[0] < 2:
        return point.clone(), point.clone()
    q = torch.quantile(replicates.double(), torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    return q[0], q[1]


def count_ci(samples: np.ndarray) -> list[float]:
    """The 95% percentile interval of resampled counts, taken at observed values (counts stay whole numbers)."""
    lo, hi = np.percentile(samples, [2.5, 97.5], method="nearest")
    return [round(float(lo), 2), round(float(hi), 2)]


def wilson(k: int, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval of k successes in n trials."""
    if n <= 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half)]


def rate(outcomes: Sequence[bool | int]) -> dict:
    """A rate with its Wilson 95% interval; the outcomes are kept in prompt order as a string of 0s and 1s (one
    short line in the JSON), so that a later comparison can pair them with another report's."""
    xs = [int(bool(v)) for v in outcomes]
    n, k = len(xs), sum(xs)
    return {"value": k / n if n else None, "n": n, "ci95": wilson(k, n) if n else [None, None], "interval": "wilson",
            "outcomes": "".join(map(str, xs))}


def outcomes_of(entry: dict) -> list[int] | None:
    """The 0/1 outcomes a rate entry carries (None for reports written before they were kept)."""
    bits = entry.get("outcomes")
    return [int(c) for c in bits] if isinstance(bits, str) and set(bits) <= {"0", "1"} else None


def bootstrap_mean(values, B: int, seed: int) -> dict:
    """A mean with a seeded percentile-bootstrap 95% interval (B replicates; none below 2 values)."""
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    out = {"value": float(x.mean()) if len(x) else None, "n": len(x)}
    if len(x) >= 2 and B > 0:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(x), (B, len(x)), generator=g)
        q = torch.quantile(x[idx].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64))
        out["ci95"] = [float(q[0]), float(q[1])]
    else:
        out["ci95"] = [out["value"], out["value"]]
    return out


def paired_rate_change(candidate: Sequence[int], baseline: Sequence[int], z: float = Z95) -> dict:
    """candidate − baseline for 0/1 outcomes on the same prompts: Bonett & Price (2012) adjusted Wald interval,
    with the exact McNemar p-value of 'no change'."""
    n = len(candidate)
    up = sum(1 for c, b in zip(candidate, baseline) if c and not b)  # 1 under the candidate only
    down = sum(1 for c, b in zip(candidate, baseline) if b and not c)
    p_up, p_down = (up + 1) / (n + 2), (down + 1) / (n + 2)
    centre = p_up - p_down
    half = z * math.sqrt(max(p_up + p_down - centre * centre, 0.0) / (n + 2))
    return {"delta": (up - down) / n, "ci95": [max(-1.0, centre - half), min(1.0, centre + half)], "paired": True,
            "n": n, "only_candidate": up, "only_baseline": down, "p_value": mcnemar_exact(up, down),
            "interval": "Bonett-Price paired"}


def rate_change(k1: int, n1: int, k2: int, n2: int) -> dict:
    """k1/n1 − k2/n2 from two independent samples: Newcombe's hybrid score interval (method 10)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return {"delta": d, "ci95": [d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)], "paired": False,
            "n": min(n1, n2), "interval": "Newcombe hybrid score"}


def mean_change(candidate: dict, baseline: dict, B: int = 2000, seed: int = 0) -> dict:
    """candidate − baseline of a mean metric: a paired bootstrap over items when both carry per-item values of
    the same items, else the difference with a normal interval from each report's own 95% interval."""
    a, b = candidate.get("items"), baseline.get("items")
    if a is not None and b is not None and len(a) == len(b) and candidate.get("set_sha256") == baseline.get("set_sha256"):
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        diffs = bootstrap_mean([x - y for x, y in pairs], B, seed)
        return {"delta": diffs["value"], "ci95": diffs["ci95"], "paired": True, "n": len(pairs),
                "interval": "paired bootstrap"}
    d = candidate["value"] - baseline["value"]
    se = [((r.get("ci95") or [None, None])[1] - (r.get("ci95") or [None, None])[0]) / (2 * Z95)
          if None not in (r.get("ci95") or [None, None]) else 0.0 for r in (candidate, baseline)]
    half = Z95 * math.hypot(*se)
    return {"delta": d, "ci95": [d - half, d + half], "paired": False, "n": min(candidate.get("n") or 0, baseline.get("n") or 0),
            "interval": "normal, from each report's 95% interval"}
