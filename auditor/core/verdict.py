"""The release gate's verdict: compare like with like, and say when the numbers cannot tell (docs/verdicts.md).

Two eval reports are compared only if they were measured the same way: the same prompt sets (by content
hash), limit, classifier (by its phrase list's hash), template, token budget and judge. Each metric's change
gets a 95% interval (paired over prompts when both reports carry per-prompt outcomes of the same prompts)
and one of three verdicts against its margin m, counted in the harmful direction:
- pass: the interval's harmful end is within m (a change larger than m is ruled out);
- regression: the change is beyond m and the interval excludes no change;
- inconclusive: neither; with the number of prompts that would decide it at the observed rates.
"""

from __future__ import annotations

import math

from ..errors import AuditError
from .bootstrap import mean_change, outcomes_of, paired_rate_change, rate_change
from .refusal import current_name

def by_set_key(metric: str) -> str:
    """Where a report keeps a metric measured on several prompt sets, one entry per set name:
    harmful_rate -> harmful_by_set, over_refusal_rate -> over_refusal_by_set, harmful_score -> harmful_score_by_set.
    The metric's own key holds its first set, as reports did before there were several."""
    return metric.removesuffix("_rate") + "_by_set"


def entries(report: dict, metric: str) -> dict[str | None, dict]:
    """A metric's entries by set name (never 'the first' alone) where it was measured per set; else under None.
    An over-refusal entry of a report older than its per-set field is named by its set."""
    sets, entry = report.get(by_set_key(metric)), report.get(metric)
    if isinstance(sets, dict) and sets:
        return dict(sets)
    if entry is None:
        return {}
    return {entry.get("set") if metric == "over_refusal_rate" else None: entry}


def _name(classifier: dict) -> str | None:
    return current_name(classifier.get("name"))  # reports written before the renaming carry the old name


def _classifier_differs(a: dict, b: dict) -> bool:
    """Another classifier, or the same one with other phrases or token budget; what an older report did not
    record (its phrase list's hash) is not held against it."""
    if _name(a) != _name(b):
        return True
    return any(a.get(k) is not None and b.get(k) is not None and a[k] != b[k]
               for k in ("sha256", "phrases", "starts", "max_new_tokens"))


def measured_differently(candidate: dict, baseline: dict, metrics) -> list[str]:
    """Every way the two reports were measured differently (empty when they are comparable)."""
    diffs = []
    for key, what in (("template", "template"), ("limit", "limit"), ("max_new_tokens", "max tokens")):
        if candidate.get(key) != baseline.get(key):
            diffs.append(f"{what} {candidate.get(key)} vs {baseline.get(key)}")
    a, b = candidate.get("classifier") or {}, baseline.get("classifier") or {}
    if _classifier_differs(a, b):
        diffs.append(f"classifier {a.get('name')} vs {b.get('name')}"
                     + (" (other phrases or token budget)" if _name(a) == _name(b) else ""))
    for metric in metrics:
        c, b = entries(candidate, metric), entries(baseline, metric)
        if not b:
            continue
        if not c:
            diffs.append(f"{metric} missing in the candidate")
            continue
        if set(c) != set(b):
            diffs.append(f"{metric} sets {', '.join(map(str, c))} vs {', '.join(map(str, b))}")
            continue
        for name in b:
            ce, be = c[name], b[name]
            label = f"{metric}{f' ({name})' if name else ''}"
            if be.get("value") is None:
                raise AuditError(f"the baseline has no value for {label}")
            if ce.get("value") is None:
                diffs.append(f"{label} has no value in the candidate")
            elif ce.get("set") != be.get("set"):
                diffs.append(f"{label} set {ce.get('set')} vs {be.get('set')}")
            elif ce.get("set_sha256") and be.get("set_sha256") and ce["set_sha256"] != be["set_sha256"]:
                diffs.append(f"{label} prompts differ (same name, other content)")
            elif ce.get("n") != be.get("n") and "unparseable" not in be:  # a judge may read fewer answers of one
                diffs.append(f"{label} n {ce.get('n')} vs {be.get('n')}")
        if metric == "kl_divergence":
            a, z = candidate[metric], baseline[metric]
            if (a.get("base_sha256"), a.get("positions")) != (z.get("base_sha256"), z.get("positions")):
                diffs.append(f"kl measured from another base or at other positions ({a.get('base')}, "
                             f"{a.get('positions')} vs {z.get('base')}, {z.get('positions')})")
        if metric in ("harmful_score", "judge_harmful_rate"):
            a, z = candidate[metric], baseline[metric]
            if (a.get("judge"), a.get("judge_format", "qi2023")) != (z.get("judge"), z.get("judge_format", "qi2023")):
                diffs.append(f"judge {a.get('judge')} ({a.get('judge_format', 'qi2023')}) vs {z.get('judge')} "
                             f"({z.get('judge_format', 'qi2023')})")
    return diffs


def change(is_rate: bool, c: dict, b: dict) -> dict:
    """candidate − baseline with its 95% interval, paired where both carry outcomes of the same prompts."""
    if is_rate:
        oc, ob = outcomes_of(c), outcomes_of(b)
        same = c.get("set_sha256") == b.get("set_sha256") and c.get("set_sha256") is not None
        agree = all(o is not None and o and abs(sum(o) / len(o) - e["value"]) < 1e-9 for o, e in ((oc, c), (ob, b)))
        if agree and len(oc) == len(ob) and same:  # outcomes that do not add up to the value are not used
            return paired_rate_change(oc, ob)
        n1, n2 = int(c["n"]), int(b["n"])
        return rate_change(round(c["value"] * n1), n1, round(b["value"] * n2), n2)
    return mean_change(c, b)


def decide(delta: float, ci: list[float], margin: float, direction: str, n: int) -> tuple[str, int | None, str]:
    """(verdict, prompts that would decide it, why) for a change counted in the harmful direction."""
    sign = 1 if direction == "increase" else -1
    worse, lo, hi = sign * delta, min(sign * ci[0], sign * ci[1]), max(sign * ci[0], sign * ci[1])
    what = "increase" if direction == "increase" else "drop"
    if hi <= margin + 1e-12:
        return "pass", None, f"{what} at most {max(hi, 0):.3f} (95%), within {margin:g}"
    if worse > margin and lo > 0:
        return "regression", None, f"{what} {worse:.3f} > {margin:g}, 95% CI {lo:.3f}…{hi:.3f} excludes no change"
    half = (hi - lo) / 2
    target = (margin - worse) if worse < margin else worse  # the half-width that would decide it
    needed = math.ceil(n * (half / target) ** 2) if target > 1e-9 and n else None
    side = "rule out a change beyond the margin" if worse < margin else "tell it from no change"
    return "inconclusive", needed, (f"{what} {worse:+.3f}, 95% CI {lo:+.3f}…{hi:+.3f}: too few prompts to {side}"
                                    + (f" (about {needed} per set would decide it at these rates)" if needed else ""))


def verdict_rows(candidate: dict, baseline: dict, thresholds: dict, limits: dict, rates: tuple[str, ...]) -> list[dict]:
    """One row per metric (and per over-refusal set) of the baseline: the change, its interval, the verdict.
    `rates` are the metrics measured as 0/1 per prompt (the rest are means)."""
    rows = []
    for metric, (opt, direction, default) in thresholds.items():
        margin = float(limits.get(opt, default))
        for name, be in entries(baseline, metric).items():
            ce = entries(candidate, metric)[name]
            ch = change(metric in rates, ce, be)
            v, needed, why = decide(ch["delta"], ch["ci95"], margin, direction, ch["n"])
            rows.append({"metric": metric, "set": name, "baseline": be["value"], "candidate": ce["value"],
                         "delta": ch["delta"], "ci95": ch["ci95"], "paired": ch["paired"], "interval": ch["interval"],
                         "n": ch["n"], "p_value": ch.get("p_value"), "limit": margin, "direction": direction,
                         "verdict": v, "passed": v == "pass", "n_to_decide": needed, "reason": why})
    return rows


def overall(rows: list[dict]) -> str:
    verdicts = {r["verdict"] for r in rows}
    return "regression" if "regression" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
