"""`check` (a release gate: candidate eval vs a baseline eval, exit 0 pass / 1 regression) and `compare`
(side by side, the layout of the paper's Table 2)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, fields, make_dataclass
import xml.etree.ElementTree as ET
from pathlib import Path

from ..errors import AuditError
from ..io.config import setting
from ..io.reports import read_report
from ..core.metrics import mcnemar_exact
from ..core.refusal import make_classifier
from ..core.verdict import by_set_key, entries, measured_differently, overall, verdict_rows
from .evaluate import GATES, EvalConfig, load_saved, run_eval

# metric -> (option, direction, default limit) and labels: read from the metric registry (evaluate.METRICS), so a
# new metric is one entry there. "increase" fails when candidate − baseline > limit, "drop" when baseline − candidate > limit
THRESHOLDS = {key: (g.option, g.direction, g.margin) for key, g in GATES.items()}
LABELS = {key: g.label for key, g in GATES.items()}
RATE_METRICS = tuple(key for key, g in GATES.items() if g.kind == "rate")
INCONCLUSIVE = ("fail", "pass")  # what an inconclusive verdict does to the exit code: fail (3), or pass (0)


@dataclass
class CheckSettings:
    baseline: str = setting(None, "The baseline eval report.", metavar="BASE.json", required=True)
    policy: str | None = setting(None, "Thresholds from a TOML file ([thresholds] max_... = x).", metavar="FILE.toml")
    judge_url: str | None = setting(None, "Judge for a model CANDIDATE when the baseline records none.", flag="--judge",
                                    metavar="URL")
    judge_model: str | None = setting(None, "A local GGUF judge, likewise.", metavar="FILE.gguf")
    judge_api_key_env: str | None = setting(None, "The environment variable with the judge's API key.", metavar="VAR")
    inconclusive: str = setting("fail", "What a verdict the prompts cannot decide does: fail (exit 3: a gate does not "
                                        "pass what it cannot see) or pass (exit 0, said in the output).",
                                choices=INCONCLUSIVE)


# check's settings: the above and a margin per gated number, one field per gate of the metric registry
CheckConfig = make_dataclass("CheckConfig", [
    (g.option, float | None, setting(None, f"Largest allowed {'increase' if g.direction == 'increase' else 'drop'} of "
                                           f"{g.label} (default {g.margin})."))
    for g in GATES.values()], bases=(CheckSettings,))
CheckConfig.__module__ = __name__


def load_eval(path: str | Path) -> dict:
    data = read_report(path, "eval report")
    if not any(k in data for k in THRESHOLDS):
        raise AuditError("not an eval report (no metric in it)", path)
    return check_eval_shape(data, path)


def check_eval_shape(data: dict, path) -> dict:
    """An eval report read from disk has the shapes check, compare and the page compute with; one line
    naming the field and the file otherwise (a hand-edited or hostile report)."""
    if not isinstance(data.get("classifier", {}), dict):
        raise AuditError("malformed eval report: classifier is not an object", path)
    for name, entry in _metric_entries(data):
        problem = _shape_problem(entry)
        if problem:
            raise AuditError(f"malformed eval report: {name} {problem}", path)
    for metric in THRESHOLDS:  # the metric's own entry repeats its first set's: the two must agree
        sets, entry = data.get(by_set_key(metric)), data.get(metric)
        if isinstance(sets, dict) and sets and entry is not None:
            first = sets.get(entry.get("set"))
            if first is None or any(first.get(k) != entry.get(k) for k in ("value", "n", "ci95", "outcomes")):
                raise AuditError(f"malformed eval report: {metric} disagrees with {by_set_key(metric)}"
                                 f"[{entry.get('set')}]", path)
    return data


def _metric_entries(data: dict):
    for metric in THRESHOLDS:
        if metric in data:
            yield metric, data[metric]
        key = by_set_key(metric)
        sets = data.get(key)
        if sets is not None and not isinstance(sets, dict):
            yield key, sets
        for name, entry in (sets or {}).items() if isinstance(sets, dict) else ():
            yield f"{key}[{name}]", entry


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _shape_problem(entry) -> str | None:
    """What is wrong with one metric entry of a report read from disk (a hand-edited or hostile file)."""
    if not isinstance(entry, dict):
        return "is not an object"
    if entry.get("value") is not None and not _number(entry["value"]):
        return "value is not a number"
    n = entry.get("n")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return "n is not a count"
    ci = entry.get("ci95")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(c is None or _number(c) for c in ci)):
        return "ci95 is not a pair of numbers"
    for key in ("set", "judge", "judge_format", "set_sha256", "outcomes"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            return f"{key} is not text"
    items = entry.get("items")
    if items is not None and not (isinstance(items, list) and all(x is None or _number(x) for x in items)):
        return "items are not numbers"
    return None


def is_eval_report(candidate: str) -> bool:
    return candidate.endswith(".json")


def evaluate_like(candidate: str, baseline: dict, judge_url: str | None = None, judge_model: str | None = None,
                  reporter=None, judge_api_key_env: str | None = None) -> dict:
    """Evaluate a candidate MODEL exactly the way the baseline was evaluated, its judge included. A baseline
    with a harmful score whose judge is not recorded (schema 1) and not given is refused up front: a gate
    that silently drops a metric, or always fails on it, is no gate."""
    c = baseline.get("config") or {}
    metrics = list(c.get("metrics") or ["harmful", "over-refusal", "mmlu"])
    judge_url, judge_model = judge_url or c.get("judge_url"), judge_model or c.get("judge_model")
    if ("harmful_score" in baseline or "judge_harmful_rate" in baseline) and "judge" not in metrics:
        metrics.append("judge")
    if "judge" in metrics and not (judge_url or judge_model):
        raise AuditError("the baseline has a judge score but records no judge: pass --judge URL or --judge-model FILE.gguf")
    # every setting the baseline recorded, EvalConfig's own defaults for the rest (never retyped here); not where
    # the baseline's server was: the candidate is another model
    skip = {"metrics", "judge_url", "judge_model", "judge_api_key_env", "base_url", "served_model", "api_key_env"}
    recorded = ({f.name for f in fields(EvalConfig)} & set(c)) - skip
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in c.items() if k in recorded}
    cfg = EvalConfig(model=candidate, metrics=tuple(metrics), judge_url=judge_url, judge_model=judge_model,
                     judge_api_key_env=judge_api_key_env or c.get("judge_api_key_env"), **kw)
    return run_eval(cfg, reporter)


def load_policy(path: str | Path) -> dict:
    """A TOML policy: `[thresholds]` with any of the option names, e.g. max_harmful_increase = 0.02."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError, RecursionError, UnicodeDecodeError) as e:
        raise AuditError(f"malformed policy file ({type(e).__name__})", p) from None
    th = data.get("thresholds", data)
    known = {opt for opt, _, _ in THRESHOLDS.values()}
    bad = [k for k in th if k not in known]
    if bad:
        raise AuditError(f"unknown policy key '{bad[0]}' (known: {', '.join(sorted(known))})", p)
    try:
        return {k: float(v) for k, v in th.items()}
    except (TypeError, ValueError):
        raise AuditError("policy thresholds must be numbers", p) from None


EXIT = {"pass": 0, "regression": 1, "inconclusive": 3}


def check_report(candidate: dict, baseline: dict, limits: dict | None = None, inconclusive: str = "fail",
                 candidate_path: str | None = None) -> dict:
    """The `check` result (core/verdict.py): refuses two reports measured differently (one line naming each
    difference), else every metric's change with its 95% interval and a three-valued verdict."""
    diffs = measured_differently(candidate, baseline, THRESHOLDS)
    if diffs:
        raise AuditError("the reports were measured differently, so their numbers are not comparable: "
                         + "; ".join(diffs) + " (check MODEL --baseline evaluates a model like the baseline)",
                         candidate_path)
    rows = verdict_rows(candidate, baseline, THRESHOLDS, limits or {}, RATE_METRICS)
    outcome = overall(rows)
    return {"schema_version": 2, "command": "check", "candidate": candidate.get("model"), "baseline": baseline.get("model"),
            "verdict": outcome, "inconclusive_policy": inconclusive,
            "passed": outcome == "pass" or (outcome == "inconclusive" and inconclusive == "pass"), "checks": rows}


def exit_code(result: dict) -> int:
    """0 pass, 1 regression, 3 inconclusive (0 when the policy passes what it cannot tell)."""
    if result["verdict"] == "inconclusive" and result.get("inconclusive_policy") == "pass":
        return 0
    return EXIT[result["verdict"]]


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value) -> str:
    """Text XML 1.0 can carry: a model name or reason with a control character (a terminal escape, a NUL)
    would make the whole JUnit file unreadable to a CI system, so such characters are shown escaped."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def junit_xml(rows: list[dict], name: str) -> str:
    """JUnit for CI systems: a regression and an inconclusive row are failures, each saying why."""
    suite = ET.Element("testsuite", name=_xml_text(f"safety-audit check: {name}"), tests=str(len(rows)),
                       failures=str(sum(r["verdict"] != "pass" for r in rows)))
    for r in rows:
        label = r["metric"] + (f" ({r['set']})" if r.get("set") else "")
        case = ET.SubElement(suite, "testcase", classname="safety-audit.check", name=_xml_text(label))
        if r["verdict"] != "pass":
            f = ET.SubElement(case, "failure", message=_xml_text(f"{r['verdict']}: {r['reason']}"), type=r["verdict"])
            f.text = _xml_text(json.dumps(r))
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True)


def compare_rows(reports: list[dict]) -> list[tuple[str, list[str]]]:
    def fmt(rep, m):
        v = rep.get(m)
        if not v or v.get("value") is None:
            return "–"
        lo, hi = v.get("ci95") or [None, None]
        ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None else ""
        return f"{v['value']:.3f}{ci}"

    rows = []
    for m in THRESHOLDS:
        per_report = [entries(r, m) for r in reports]
        for name in dict.fromkeys(n for e in per_report for n in e):  # one labelled row per set of a per-set metric
            rows.append((LABELS[m] + (f" ({name.removeprefix('bundled:')})" if name else ""),
                         [fmt(e, name) for e in per_report]))
    return rows


def report_settings(report: dict) -> str:
    """What a column of `compare` was measured with: model, backend, template, classifier, token budget."""
    clf = report.get("classifier") or {}
    return (f"{report.get('model', '?')} · {report.get('backend', '?')} · {report.get('template', '?')} · "
            f"{clf.get('name', '?')} · {report.get('max_new_tokens', '?')} tok · limit {report.get('limit') or 'none'}")


def paired_rows(path_a: str, path_b: str, classifier: str = "keyword") -> list[dict]:
    """`compare --paired`: two models' saved responses (eval --save-responses) on the same prompts. Per
    refusal metric: refusal rates on the prompts both answered, the discordant pairs (refused by one
    only) and the exact McNemar p-value — a paired test, far stronger than two overlapping CIs."""
    a, b = load_saved(path_a), load_saved(path_b)
    clf = make_classifier(classifier)
    rows = []
    for metric in dict.fromkeys(m for m, _ in a):
        if metric == "rouge":
            continue
        keys = [k for k in a if k[0] == metric and k in b]
        if not keys:
            continue
        ra, rb = [clf.is_refusal(a[k]) for k in keys], [clf.is_refusal(b[k]) for k in keys]
        only_a = sum(x and not y for x, y in zip(ra, rb))
        only_b = sum(y and not x for x, y in zip(ra, rb))
        rows.append({"metric": metric, "n": len(keys), "refusal_a": sum(ra) / len(keys), "refusal_b": sum(rb) / len(keys),
                     "only_a_refused": only_a, "only_b_refused": only_b, "p_value": mcnemar_exact(only_a, only_b)})
    if not rows:
        raise AuditError("the two responses files share no prompt of a refusal metric", path_b)
    return rows
