"""The uncertainty half of `locate` (docs/METHOD.md §1.2a): CIs on every count, and the search re-run from
several starts on bootstrap resamples of D_o (`core.stability` has the statistics; this module drives
the counter). Only ranges no earlier search counted cost model runs; everything else is arithmetic on
the journal's per-prompt verdicts, so a killed run resumes like the search itself."""

from __future__ import annotations

from ..core.search import progressive_search, survey
from ..core.bootstrap import prompt_resamples
from ..core.stability import RESAMPLE_SEED, PairedCI, ResampledCount, summarize


def auto_starts(n_layers: int, primary: tuple[int, int], survey_rows: list[dict] | None, alpha: float, k: int = 3):
    """Other starts when none are given: the survey's next-best windows that do not overlap the primary
    start (where a searcher would look next), else k windows of the primary's width spread over the model."""
    overlaps = lambda r: not (r[1] < primary[0] or r[0] > primary[1])  # noqa: E731
    if survey_rows:
        sign = 1 if alpha > 1 else -1
        ranked = sorted(survey_rows, key=lambda r: (-sign * r["count"], r["range"][0]))
        return [tuple(r["range"]) for r in ranked if not overlaps(r["range"]) and not r.get("blunt")][:k]
    w = primary[1] - primary[0] + 1
    spread = [round(q * (n_layers - w)) for q in ((i + 1) / (k + 1) for i in range(k))]
    return [(a, a + w - 1) for a in dict.fromkeys(spread) if not overlaps((a, a + w - 1))]


def run_stability(count, n_layers: int, alpha: float, patience: int, primary: dict, starts: list[tuple[int, int]],
                  resamples: int, ci: PairedCI, reporter, guard=None) -> dict:
    """Search from the primary start and from `starts`, on the full D_o (sample 0) and on `resamples`
    bootstrap resamples of it. `primary`: {"label", "range", "survey_width"|None} as the main search ran.
    `guard`: the main search's (locate_guard.Guard); every search keeps to it, and each end says what it kept.
    The guard set is not resampled: it is a constraint on a range, not the thing measured."""
    n = len(count.prompts)
    weights = prompt_resamples(n, resamples, RESAMPLE_SEED)
    labelled = [(primary["label"], tuple(primary["range"]), primary.get("survey_width"))]
    labelled += [(f"{a}-{b}", (a, b), None) for a, b in starts if (a, b) != tuple(primary["range"])]
    runs = []
    reporter.status(f"stability: {len(labelled)} starts × {resamples + 1} samples of D_o")
    for sample in range(resamples + 1):
        cnt = count if sample == 0 else ResampledCount(count.bits, weights[sample - 1])
        for label, start, width in labelled:
            if width and sample:  # a survey start is the best window of *this* sample
                start, _ = survey(cnt, n_layers, width, alpha, cnt(None), guard)
            final, best, _ = progressive_search(cnt, start, n_layers, alpha, patience, trim=bool(width), admissible=guard)
            runs.append({"start": label, "from": list(start), "resample": sample, "range": list(final), "count": best})
    out = summarize(runs, n_layers, lambda rg: count(tuple(rg), alpha), paired_difference(count, alpha, ci),
                    1 if alpha > 1 else -1, guard)
    for end in out["ends"] if guard else ():
        end["guard_kept"], end["guard_admitted"] = guard.kept(end["range"]), guard(end["range"])
    rec = out["recommended"]
    rec["ci95"] = ci.count(count.bits(tuple(rec["range"]), alpha))
    rec["delta_ci95"] = ci.difference(count.bits(tuple(rec["range"]), alpha), count.bits(None))
    return {"alpha": alpha, "starts": [{"label": lb, "range": list(st)} for lb, st, _ in labelled],
            "resamples": resamples, "resample_seed": RESAMPLE_SEED, **out, "runs": runs}


def annotate_cis(count, report_rows: list[list[dict]], alpha_of, ci: PairedCI) -> dict:
    """Add `ci95` (the count's) and `delta_ci95` (paired, minus the baseline) to every row that has a
    range; returns the baseline's CI and the method. Rows whose verdicts are not in the journal are counted."""
    base = count.bits(None)
    for rows in report_rows:
        for r in rows:
            bits = count.bits(tuple(r["range"]), alpha_of(r))
            r["ci95"], r["delta_ci95"] = ci.count(bits), ci.difference(bits, base)
    return {"baseline_ci95": ci.count(base), "bootstrap": ci.describe()}


def paired_difference(count, alpha: float, ci: PairedCI):
    """For `core.search.landscape`: (range a, range b) -> the paired 95% CI of count(a) - count(b)."""
    return lambda a, b: ci.difference(count.bits(tuple(a), alpha), count.bits(tuple(b), alpha))

