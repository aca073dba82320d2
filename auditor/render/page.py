"""`report`: the JSON reports of an audit as one self-contained HTML page (plots embedded as PNG data, no
script, no network, no external font) and as a markdown section for a model card.

The page puts the verdict first (a check report's thresholds, pass or fail each), then the scan curves,
the locate sweep, eval metrics with their CIs beside the baseline's, the attention maps, and where every
number came from (model hash, versions, command lines).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader

from ..errors import AuditError
from ..io.files import atomic_write
from ..core.verdict import entries
from ..io.reports import read_report
from ..workflows.gate import LABELS, THRESHOLDS, check_eval_shape
from .plots import _pyplot, attention_figure, locate_figure, scan_figure

KNOWN = ("scan", "locate", "eval", "attention", "check")
SHAPE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)  # of a hostile report


@dataclass
class Bundle:
    """The reports of one audit, by command; `baseline` is the eval the check compared against."""

    reports: dict[str, dict] = field(default_factory=dict)
    baseline: dict | None = None
    sources: dict[str, str] = field(default_factory=dict)


def load_bundle(paths: list[str | Path]) -> Bundle:
    """Reports from folders (every *.json in them) and files; unknown JSON in a folder is skipped, an
    unreadable file named on the command line is an error."""
    found: list[tuple[Path, dict]] = []
    for spec in paths:
        p = Path(spec)
        if p.is_dir():
            for f in sorted(p.glob("*.json")):
                try:
                    found.append((f, read_report(f)))
                except AuditError:
                    continue  # the audit's own state file, a plot's sidecar: not a report
        elif p.exists():
            found.append((p, read_report(p)))
        else:
            raise AuditError("report or folder not found", p)
    bundle = Bundle()
    evals = [(f, check_eval_shape(r, f)) for f, r in found if r.get("command") == "eval"]
    for f, r in found:
        if r.get("command") in KNOWN and r.get("command") != "eval":
            bundle.reports[r["command"]], bundle.sources[r["command"]] = r, str(f)
    for f, r in evals:
        if "baseline" in f.stem and len(evals) > 1:  # audit writes baseline-eval.json beside eval.json
            bundle.baseline, bundle.sources["baseline"] = r, str(f)
        else:
            bundle.reports["eval"], bundle.sources["eval"] = r, str(f)
    if not bundle.reports:
        raise AuditError("no safety-audit report found (scan, locate, eval, attention or check JSON)", Path(paths[0]))
    return bundle


def _png(figure) -> str:
    buf = io.BytesIO()
    try:
        figure.savefig(buf, format="png")
    finally:
        _pyplot().close(figure)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _metric_rows(ev: dict | None, base: dict | None) -> list[dict]:
    rows = []
    for metric in THRESHOLDS:
        based = entries(base or {}, metric)
        for name, v in entries(ev or {}, metric).items():
            if not v or v.get("value") is None:
                continue
            b = based.get(name)
            label = LABELS[metric] + (f" ({name.removeprefix('bundled:')})" if name else "")
            rows.append({"label": label, "value": v["value"], "ci": v.get("ci95"), "n": v.get("n"),
                         "base": b.get("value") if b else None, "base_ci": b.get("ci95") if b else None})
    return rows


def _attention_summary(att: dict) -> list[dict]:
    """Mean share of attention on content words inside and outside the safety layers, per prompt."""
    rng, layers = att.get("safety_layers"), att["layers"]
    out = []
    for p in att["prompts"]:
        share = dict(zip(layers, p["shares"]["content"]))
        inside = [share[k] for k in layers if rng and rng[0] <= k <= rng[1]]
        outside = [share[k] for k in layers if not (rng and rng[0] <= k <= rng[1])]
        out.append({"role": p["role"], "prompt": p["prompt"], "inside": sum(inside) / len(inside) if inside else None,
                    "outside": sum(outside) / len(outside) if outside else None})
    return out


def page_context(bundle: Bundle) -> dict:
    r = bundle.reports
    check = r.get("check")
    model = next((x.get("model") for x in (r.get("eval"), r.get("scan"), r.get("locate"), r.get("attention"), check)
                  if x and x.get("model")), "?")
    if check and check.get("candidate"):
        model = check["candidate"]
    return {
        "model": model, "check": check, "verdict": None if check is None else check.get("verdict") or (
            "pass" if check.get("passed") else "regression"),
        "labels": LABELS, "scan": r.get("scan"), "locate": r.get("locate"), "eval": r.get("eval"),
        "attention": r.get("attention"), "baseline": bundle.baseline,
        "metrics": _metric_rows(r.get("eval"), bundle.baseline) if r.get("eval") else [],
        "attention_summary": _attention_summary(r["attention"]) if r.get("attention") else [],
        "provenance": [{"what": k, "file": bundle.sources.get(k), **{f: v.get(f) for f in
                        ("model", "model_sha256", "backend", "tool", "created", "command_line")}}
                       for k, v in [*r.items(), ("baseline", bundle.baseline)] if v],
    }


def page_facts(bundle: Bundle) -> dict:
    """What the page says, as JSON: for CI systems that read the verdict rather than look at it."""
    try:
        ctx = page_context(bundle)
    except SHAPE_ERRORS as e:
        raise _malformed(bundle, e) from None
    layers = {k: (ctx[k] or {}).get(f) for k, f in (("scan", "initial_range"), ("locate", "safety_layers")) if ctx[k]}
    return {"schema_version": 2, "command": "report", "model": ctx["model"],
            "passed": None if ctx["check"] is None else bool(ctx["check"].get("passed")), "verdict": ctx["verdict"],
            "checks": (ctx["check"] or {}).get("checks"), "metrics": ctx["metrics"], "safety_layers": layers,
            "attention": ctx["attention_summary"], "provenance": ctx["provenance"]}


_MARKDOWN_ACTIVE = re.compile(r"([\\`*{}\[\]<>()#+!|~])")  # not "_": intraword (R_h, file_name) it is text


def markdown_text(value) -> str:
    """A value as inert markdown text: HTML entities for & < > (model cards render inline HTML), every
    character markdown acts on backslash-escaped, line breaks folded (a newline would end a table row)."""
    if value is None:
        return ""
    text = str(value).replace("&", "&amp;").replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_ACTIVE.sub(lambda m: {"<": "&lt;", ">": "&gt;"}.get(m.group(1), "\\" + m.group(1)), text)


def _env(kind: str) -> Environment:
    """Everything a model or a user wrote (prompts, paths, names, command lines, responses) is data: the HTML
    page autoescapes every value (on for the whole environment: jinja's select_autoescape decides by the
    template's file name, and 'report.html.j2' ends in .j2, which left the page unescaped), and the markdown
    section passes every value through markdown_text. Template literals are not values and stay markup."""
    markdown = kind == "md"
    env = Environment(loader=PackageLoader("auditor.render", "templates"), autoescape=not markdown,
                      finalize=markdown_text if markdown else None, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    env.filters["ci"] = lambda c, d=3: "" if not c else f"{c[0]:.{d}f}–{c[1]:.{d}f}"
    env.filters["rng"] = lambda r: "none" if not r else f"{r[0]}–{r[1]}"
    return env


def _malformed(bundle: Bundle, e: Exception) -> AuditError:
    """A report read from disk with a field of an unexpected shape (hand-edited, or hostile): one line naming
    the files, never a traceback."""
    first = (str(e).splitlines() or [""])[0][:120]
    return AuditError(f"a report has a field of an unexpected shape ({type(e).__name__}: {first})",
                      ", ".join(dict.fromkeys(bundle.sources.values())))


def render_html(bundle: Bundle) -> str:
    try:
        ctx = page_context(bundle)
        figures = {"scan": scan_figure, "locate": locate_figure, "attention": attention_figure}
        ctx["plots"] = {k: _png(f(bundle.reports[k])) for k, f in figures.items() if k in bundle.reports}
        return _env("html").get_template("report.html.j2").render(**ctx)
    except SHAPE_ERRORS as e:
        raise _malformed(bundle, e) from None


def render_markdown(bundle: Bundle) -> str:
    try:
        return _env("md").get_template("report.md.j2").render(**page_context(bundle))
    except SHAPE_ERRORS as e:
        raise _malformed(bundle, e) from None


def write_page(text: str, path: str | Path, force: bool) -> Path:
    return atomic_write(path, lambda t: t.write_text(text, encoding="utf-8"), force)
