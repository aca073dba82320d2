"""The search behind `locate` (docs/METHOD.md §1.2, the paper's Table 1), on any `count(range, alpha)`.

Progressive search, as the paper: from [i, j], with α > 1 fix i and sweep the upper bound j, j+1, …
keeping the bound with the most refusals; then fix it and sweep the lower bound i, i−1, … likewise.
α < 1 mirrors it with minima. Ties keep the narrower range. A sweep stops after `patience` steps without
a new best (0 = to the end of the model). A survey tiles the model with equal-width windows and starts
from the one that moves refusals most the paper's way; the search from a window then also drops end layers
that add nothing.

A guard (`admissible(range) -> bool`, optional) keeps the search from a blunt optimum: a candidate only becomes
the new best when the guard admits it. Scaling enough of a model down stops it refusing anything, harmful
requests included (the fewest over-refusals), and scaling enough of it up can make it refuse everything (the
most); neither is a safety block. The guard is asked only about candidates that would become the new best, so
it costs a count only where the search would move. Rejected rows are marked `"blunt": True`.
"""

from __future__ import annotations

import math

ALPHA_STEP, ALPHA_MAX_STEPS = 0.05, 4
SURVEY_ALPHA = 1.2  # the edge of the paper's α range: a window's effect shows even where it is small


def _admits(admissible, rng, row) -> bool:
    """Ask the guard (if any) about a candidate that would become the new best; mark the row when it refuses."""
    if admissible is None or admissible(tuple(rng)):
        return True
    row["blunt"] = True
    return False


def _sweep(count, candidates, alpha, best, better, patience, phase, rows, admissible=None):
    """Count each candidate range in turn; return the best count and range (None if none beat `best`)."""
    best_rng, misses = None, 0
    for rng in candidates:
        c = count(rng, alpha)
        rows.append({"phase": phase, "range": list(rng), "count": c})
        if better(c, best) and _admits(admissible, rng, rows[-1]):
            best, best_rng, misses = c, rng, 0
        else:
            misses += 1
            if patience and misses >= patience:
                break
    return best, best_rng


def progressive_search(count, start: tuple[int, int], n_layers: int, alpha: float, patience: int, trim: bool = False,
                       admissible=None):
    """The paper's two sweeps; returns (range, its count, rows of the sweep). `trim`: then drop end layers
    while the count stays as good (a survey window is coarse: the block may begin or end inside it).
    `admissible`: the guard (module docstring); the start is taken as given (the caller reports whether the
    guard admits it)."""
    better = (lambda a, b: a > b) if alpha > 1 else (lambda a, b: a < b)
    i, j = start
    best = count((i, j), alpha)
    rows = [{"phase": "start", "range": [i, j], "count": best}]
    best, rng = _sweep(count, [(i, jj) for jj in range(j + 1, n_layers)], alpha, best, better, patience, "upper", rows,
                       admissible)
    j = rng[1] if rng else j
    best, rng = _sweep(count, [(ii, j) for ii in range(i - 1, -1, -1)], alpha, best, better, patience, "lower", rows,
                       admissible)
    i = rng[0] if rng else i
    for side in ((1, 0), (0, -1)) if trim else ():
        while i < j:
            c = count((i + side[0], j + side[1]), alpha)
            rows.append({"phase": "trim", "range": [i + side[0], j + side[1]], "count": c})
            if better(best, c) or not _admits(admissible, (i + side[0], j + side[1]), rows[-1]):
                break
            best, i, j = c, i + side[0], j + side[1]
    return (i, j), best, rows


def room_to_move(baseline: int, n: int) -> int:
    """+1 (scale up, α > 1) when at most half of D_o is refused unscaled, else -1: the side counts can move to."""
    return 1 if baseline <= n / 2 else -1


def choose_alpha(count, start, baseline: int, n: int) -> tuple[float, list[dict]]:
    """Automatic α: the direction with room to move (up when at most half of D_o is refused at baseline,
    else down), stepping 0.05 away from 1 until the start range moves the count by ≥ max(3, 5% of D_o)
    *the paper's way* (α > 1: more refusals, α < 1: fewer). A move the other way is no effect to search
    on: scaling the reference model's layers 19-20 by 1.05 cut refusals 59 -> 48."""
    sign = room_to_move(baseline, n)
    need = max(3, math.ceil(0.05 * n))
    trials = []
    for step in range(1, ALPHA_MAX_STEPS + 1):
        alpha = round(1 + sign * ALPHA_STEP * step, 2)
        c = count(start, alpha)
        trials.append({"alpha": alpha, "range": list(start), "count": c})
        if sign * (c - baseline) >= need:
            break
    return alpha, trials


def control_ranges(final: tuple[int, int], n_layers: int, most: int = 6) -> list[tuple[int, int]]:
    """Equal-width windows tiled outwards from the result on both sides (never overlapping it); at most
    `most`, spread evenly over the model when there are more."""
    w = final[1] - final[0] + 1
    left = [(a, a + w - 1) for a in range(final[0] - w, -1, -w)]
    right = [(a, a + w - 1) for a in range(final[1] + 1, n_layers - w + 1, w)]
    windows = sorted(left + right)
    if len(windows) > most:
        windows = [windows[round(k * (len(windows) - 1) / (most - 1))] for k in range(most)]
    return windows


def survey_windows(n_layers: int, width: int) -> list[tuple[int, int]]:
    """Equal-width windows tiling 0..n_layers-1; the last one ends at the last layer (it may overlap)."""
    starts = list(range(0, n_layers - width + 1, width))
    if starts[-1] + width < n_layers:
        starts.append(n_layers - width)
    return [(a, a + width - 1) for a in starts]


def survey(count, n_layers: int, width: int, alpha: float, baseline: int,
           admissible=None) -> tuple[tuple[int, int], list[dict]]:
    """Count every window at `alpha`; return the one that moves refusals most the paper's way, and all rows.
    With a guard, the best window it admits (asked best first); the best of all when it admits none."""
    sign = 1 if alpha > 1 else -1
    rows = [{"range": list(w), "count": count(w, alpha)} for w in survey_windows(n_layers, width)]
    ranked = sorted(rows, key=lambda r: (-sign * (r["count"] - baseline), r["range"][0]))
    best = next((r for r in ranked if _admits(admissible, r["range"], r)), ranked[0])
    return tuple(best["range"]), rows


def _noise(a: int, b: int, n: int) -> float:
    """Two standard deviations of the difference of two binomial counts on n prompts, taken as independent
    (the same prompts make them positively correlated, so this errs towards calling a result uncertain)."""
    var = lambda c: n * (c / n) * (1 - c / n) if n else 0.0  # noqa: E731
    return 2 * math.sqrt(var(a) + var(b))


def _within_noise(sign, a_rng, a, b_rng, b, n, paired) -> bool:
    """Is range a's count no better than b's beyond noise, i.e. could b be as good as a? With the ranges'
    per-prompt verdicts (`paired`: CI of count(a) - count(b) over the same D_o resamples), the paired CI;
    else two binomial SDs."""
    if paired is None:
        return sign * (a - b) <= _noise(a, b, n)
    lo, hi = paired(a_rng, b_rng)
    return (lo if sign > 0 else -hi) <= 0


def landscape(rows: list[dict], final: tuple[int, int], best: int, alpha: float, n: int,
              survey_rows: list[dict] | None = None, baseline: int | None = None, controls: list[dict] | None = None,
              paired=None) -> dict:
    """Does the search name one range, or is the landscape too rough to? Every range counted is compared
    with the chosen one: those within sampling noise of its count are equally supported. With a survey,
    windows within noise of the best window mean the answer depends on where the search starts; a control
    range beyond noise *better* than the chosen one means the search started away from the strongest block.
    A range that contains the chosen one and is no better is no rival: its extra layers add nothing.
    `paired(a, b)`: the 95% CI of count(a) - count(b) on the same prompts (the sharper test), when known."""
    sign = 1 if alpha > 1 else -1
    rows = [r for r in rows if not r.get("blunt")]  # a range the guard refused is no rival: it is not a safety block
    survey_rows = [r for r in survey_rows or [] if not r.get("blunt")]
    wider = lambda r: r[0] <= final[0] and final[1] <= r[1]  # noqa: E731 - adds layers to the chosen range: no rival
    near = sorted({tuple(r["range"]) for r in rows if tuple(r["range"]) != tuple(final) and not wider(r["range"])
                   and _within_noise(sign, final, best, r["range"], r["count"], n, paired)})
    others = [r for r in rows if tuple(r["range"]) != tuple(final)]
    runner = max(others, key=lambda r: sign * r["count"]) if others else None
    windows = []
    if survey_rows and baseline is not None:
        top = max(survey_rows, key=lambda r: sign * r["count"])
        windows = [r["range"] for r in survey_rows if r is not top
                   and _within_noise(sign, top["range"], top["count"], r["range"], r["count"], n, paired)]
    beaten = [c["range"] for c in controls or [] if not c.get("blunt")
              and not _within_noise(sign, c["range"], c["count"], final, best, n, paired)]
    rough = bool(near) or bool(windows) or bool(beaten)
    why = []
    if beaten:
        why.append(f"{len(beaten)} control range(s) moved refusals more than the chosen one: the search started away "
                   "from the strongest block (try --survey)")
    if near:
        why.append(f"{len(near)} other range(s) counted within sampling noise of the chosen one")
    if windows:
        why.append(f"{len(windows)} survey window(s) within noise of the best: the answer depends on the start")
    return {"verdict": "rough" if rough else "one range", "why": "; ".join(why) or "every other range counted is "
            "worse by more than sampling noise (ranges containing it add nothing)", "near": [list(r) for r in near], "near_windows": windows, "better_controls": beaten,
            "noise_rule": "paired bootstrap 95% CI of the difference" if paired else "2 SD of two independent binomial counts",
            "runner_up": {"range": runner["range"], "count": runner["count"]} if runner else None,
            "margin": sign * (best - runner["count"]) if runner else None,
            "noise_2sd": round(_noise(best, runner["count"], n), 2) if runner else None}
