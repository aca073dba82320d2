"""How far to trust `locate`'s answer (docs/METHOD.md §1.2a): every count is a number of D_o prompts
refused, so it is uncertain the way a sample is. With the per-prompt refusal verdicts of each count kept,
the uncertainty costs no model runs:

- a 95% CI per count, and per difference from the baseline, by a bootstrap over the D_o prompts that
  resamples the *same* prompts for every range (paired: the counts share their prompts);
- the search re-run from several starts, on the full D_o and on bootstrap resamples of it. A resample's
  count of a range is a weighted sum of that range's verdicts, so only ranges no search visited before
  cost a model run. How often each layer ends inside the found range is the stability map; the range
  the searches end in most often is the recommendation.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np

from .bootstrap import count_ci, prompt_resamples

CI_REPLICATES, CI_SEED, RESAMPLE_SEED = 2000, 0, 1


def as_bits(verdicts: Sequence[bool]) -> str:
    """Verdicts as a '0'/'1' string: what the journal stores (readable, 1 byte per prompt)."""
    return "".join("1" if v else "0" for v in verdicts)


def from_bits(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")


class PairedCI:
    """95% CIs of counts and of differences between counts, all on the same bootstrap resamples of D_o."""

    def __init__(self, n: int, replicates: int = CI_REPLICATES, seed: int = CI_SEED):
        self.weights, self.replicates, self.seed = prompt_resamples(n, replicates, seed), replicates, seed

    def count(self, bits: str) -> list[float]:
        return count_ci(self.weights @ from_bits(bits))

    def difference(self, bits: str, other: str) -> list[float]:
        """CI of count(bits) - count(other): paired, so far narrower than the two counts' CIs suggest."""
        return count_ci(self.weights @ (from_bits(bits).astype(np.int32) - from_bits(other)))

    def describe(self) -> dict:
        return {"method": "percentile bootstrap over D_o prompts, the same resamples for every range (paired)",
                "replicates": self.replicates, "seed": self.seed}


class ResampledCount:
    """count(range, alpha) on one bootstrap resample of D_o, from the full set's verdicts (`bits_of`)."""

    def __init__(self, bits_of: Callable, weights: np.ndarray):
        self.bits_of, self.weights = bits_of, weights

    def __call__(self, rng, alpha: float = 1.0) -> int:
        return int(self.weights @ from_bits(self.bits_of(rng, alpha)))


def layer_frequency(ranges: Sequence[Sequence[int]], n_layers: int) -> list[float]:
    """Share of the found ranges that contain each layer."""
    hits = np.zeros(n_layers)
    for a, b in ranges:
        hits[a:b + 1] += 1
    return [round(float(h), 4) for h in hits / max(1, len(ranges))]


def summarize(runs: list[dict], n_layers: int, full_count: Callable, paired: Callable, sign: int,
              admissible: Callable | None = None) -> dict:
    """The stability map and the recommendation from the runs (start × resample → found range).

    Recommended: among the ranges the searches ended in, those not worse than the best one beyond the
    paired 95% CI; of these the one most searches ended in, then the narrowest (layers that add no
    refusals are not evidence). A range rather than a union of layers, because SPPFT freezes one block.
    Verdict: `stable` when at least half the searches end exactly there; `nested` when every search's
    range contains it (they differ only by layers that add nothing beyond noise); else `start-dependent`,
    and the consensus layers (inside at least half of the found ranges) say what the searches agree on.
    `admissible`: the search's guard; an end it refuses (a start it refused, kept because nothing it admits
    beat it) is never recommended while another end passes."""
    ends = Counter(tuple(r["range"]) for r in runs)
    admitted = [rg for rg in ends if admissible is None or admissible(rg)] or list(ends)
    top = max(admitted, key=lambda rg: sign * full_count(rg))
    as_good = [rg for rg in admitted if rg == top or (lambda ci: (ci[0] if sign > 0 else -ci[1]) <= 0)(paired(top, rg))]
    best = min(as_good, key=lambda rg: (-ends[rg], rg[1] - rg[0], -sign * full_count(rg), rg[0]))
    by_start: dict[str, list] = {}
    for r in runs:
        by_start.setdefault(r["start"], []).append(r["range"])
    freq = layer_frequency([r["range"] for r in runs], n_layers)
    share = ends[best] / len(runs)
    contains = all(a <= best[0] and best[1] <= b for a, b in ends)
    verdict = "stable" if share >= 0.5 else "nested" if contains else "start-dependent"
    starts_ending = {r["start"] for r in runs if tuple(r["range"]) == best}
    why = (f"the end of {ends[best]} of {len(runs)} searches ({len(by_start)} starts × "
           f"{len({r['resample'] for r in runs})} samples of D_o, from {len(starts_ending)} of the starts)"
           + ("; every search's range contains it" if contains else "")
           + (f"; {len(as_good) - 1} other end(s) within noise of the best count, and it is the "
              "most frequent, then narrowest, of them" if len(as_good) > 1 else ""))
    return {"verdict": verdict,
            "recommended": {"range": list(best), "share": round(share, 4), "count": full_count(best), "why": why},
            "consensus_layers": [k for k, f in enumerate(freq) if f >= 0.5],
            "layer_frequency": freq,
            "by_start": {s: layer_frequency(rs, n_layers) for s, rs in by_start.items()},
            "ends": [{"range": list(rg), "runs": ends[rg], "share": round(ends[rg] / len(runs), 4),
                      "count": full_count(rg), "as_good_as_best": rg in as_good}
                     for rg in sorted(ends, key=lambda rg: (-ends[rg], -sign * full_count(rg), rg))]}
