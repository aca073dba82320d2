"""Rich tables of reports for the terminal."""

from __future__ import annotations

import functools

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..core.verdict import entries
from ..workflows.gate import LABELS, THRESHOLDS


def one_line(text: str) -> str:
    """A message as one printable line: a newline or a terminal escape inside a file name, a tensor name or
    a server's answer is shown escaped (\\n, \\x1b), never obeyed by the terminal or split over lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _inert(value):
    """Every string of a report as plain text for rich: its markup escaped (a model path or a Llama-2 token
    '[/INST]' is text, not a style tag, and a stray closing tag no error) and control characters shown, not
    sent to the terminal. Numbers, and the strings the tables branch on, are unchanged by it."""
    if isinstance(value, str):
        return escape(one_line(value))
    if isinstance(value, dict):
        return {k: _inert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_inert(v) for v in value)
    return value


def _reports_as_text(render):
    """Decorator: the table function sees its arguments with every string made inert (_inert)."""
    @functools.wraps(render)
    def wrapper(*args, **kw):
        return render(*(_inert(a) for a in args), **{k: v if k == "console" else _inert(v) for k, v in kw.items()})
    return wrapper

_BLOCKS = " ▁▂▃▄▅▆▇█"


def gap_bar(value: float, scale: float, width: int = 16) -> Text:
    """A signed horizontal bar: right of the axis for positive gaps, left for negative."""
    half = width // 2
    cells = min(half, round(abs(value) / scale * half)) if scale > 0 else 0
    if value >= 0:
        return Text(" " * half + "│", style="dim") + Text("█" * cells, style="green") + Text(" " * (half - cells))
    return Text(" " * (half - cells)) + Text("█" * cells, style="red") + Text("│", style="dim") + Text(" " * half)


def sparkline(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(_BLOCKS[1 + round((v - lo) / span * (len(_BLOCKS) - 2))] for v in values)


@_reports_as_text
def scan_table(report: dict) -> Table:
    rng = report["initial_range"]
    diff = {d["layer"]: d for d in report.get("differential") or []}
    contrast = {r["layer"]: r for r in (report.get("contrast") or {}).get("layers", [])}
    title = (f"{report['model']} · {report['backend']} · template {report['template']} · "
             f"{report['n_normal']} normal / {report['n_malicious']} malicious")
    table = Table(title=title, caption=_range_caption(report), header_style="bold")
    for col in ("layer", "cos N-N", "cos M-M", "cos N-M", "gap°", "95% CI", ""):
        table.add_column(col, justify="right" if col else "left", no_wrap=True)
    if contrast:
        table.add_column("contrast gap°", justify="right")
    if diff:
        table.add_column("Δ gap° (95% CI)", justify="right", no_wrap=True)
    scale = max(abs(r["angle_gap_deg"]) for r in report["layers"]) or 1.0
    has_ci = (report.get("bootstrap") or {}).get("replicates", 1) > 1  # without a bootstrap there is no interval
    for r in report["layers"]:
        k = r["layer"]
        inside = rng is not None and rng[0] <= k <= rng[1]
        ci = f"{r['gap_ci95'][0]:+.2f}…{r['gap_ci95'][1]:+.2f}" if has_ci else "–"
        cells = [str(k), f"{r['cos_nn']:.4f}", f"{r['cos_mm']:.4f}", f"{r['cos_nm']:.4f}", f"{r['angle_gap_deg']:+.2f}",
                 ci, gap_bar(r["angle_gap_deg"], scale, 14)]
        if contrast:
            cells.append(f"{contrast[k]['angle_gap_deg']:+.2f}" if k in contrast else "")
        if diff:
            d = diff[k]
            cells.append(f"{d['diff_gap_deg']:+.2f} ({d['ci95'][0]:+.2f}…{d['ci95'][1]:+.2f})")
        table.add_row(*cells, style="bold yellow" if inside else None)
    return table


def _range_caption(report: dict) -> str:
    rng = report["initial_range"]
    spark = sparkline([r["angle_gap_deg"] for r in report["layers"]])
    text = (f"gap by layer {spark}   no initial safety-layer range: the gap never opens above the early-layer baseline"
            if rng is None else f"gap by layer {spark}   initial safety-layer range: layers {rng[0]}–{rng[1]} (inclusive, 0-based)")
    d = report.get("differential_range")
    if d:
        text += f"\nalignment moved layers {d[0]}–{d[1]} most (differential gap > 0, 95% CI, around its peak)"
    return text


def print_scan(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(scan_table(report))
    c = report.get("contrast")
    if c:
        r = c["initial_range"]
        console.print(f"contrast {one_line(c['model'])} ({c['backend']}): initial range "
                      + (f"{r[0]}–{r[1]}" if r else "none"), markup=False)


@_reports_as_text
def locate_table(report: dict) -> Table:
    a = report["alpha"]
    title = (f"{report['model']} · {report['backend']} · α = {a:g} · classifier {report['classifier']['name']} · "
             f"{report['n_prompts']} prompts of {report['over_refusal_set']}")
    final = report["safety_layers"]
    verdict = ("stands out from" if report["stands_out"] else "does NOT stand out from") + " equal-width controls"
    if report.get("gain", 1) <= 0:
        verdict = f"no range moved refusals the paper's way (α {'>' if a > 1 else '<'} 1: {'more' if a > 1 else 'fewer'})"
    land = report.get("landscape") or {}
    near = ", ".join(f"{a}–{b}" for a, b in land.get("near", [])[:6])
    rough = (f"\n[bold red]ROUGH:[/bold red] {land['why']}" + (f"; as well supported as {final[0]}–{final[1]}: {near}" if near else "")
             ) if land.get("verdict") == "rough" else ""
    t = Table(title=title, caption=f"baseline (unscaled): {report['baseline']} refusals   safety layers: {final[0]}–{final[1]} "
              f"({report['count']} refusals; {verdict}){rough}{_guard_line(report.get('guard'))}", header_style="bold")
    for c in ("phase", "range", "refusals", "95% CI", "Δ vs baseline", "Δ 95% CI (paired)"):
        t.add_column(c, justify="right")
    sv = report.get("survey")
    rows = [dict(w, phase=f"survey α {sv['alpha']:g}") for w in sv["windows"]] if sv else []
    rows += [dict(r, phase=f"α trial {r['alpha']:g}") for r in (report["alpha_choice"]["trials"] if isinstance(report["alpha_choice"], dict) else [])]
    rows += report["sweep"] + [dict(c, phase="control") for c in report["controls"]]
    for r in rows:
        hit = r["range"] == final and r["phase"] != "control"
        tied = r["phase"] != "control" and r["range"] in land.get("near", [])
        t.add_row(r["phase"] + (" ✗ blunt" if r.get("blunt") else ""), f"{r['range'][0]}–{r['range'][1]}" + (" ≈" if tied else ""),
                  str(r["count"]), _span(r.get("ci95")),
                  f"{r['count'] - report['baseline']:+d}", _span(r.get("delta_ci95"), signed=True),
                  style="bold yellow" if hit else ("dim" if r["phase"] == "control" else None))
    return t


def _guard_line(g: dict | None) -> str:
    """The guard under the locate table: what the chosen range kept, how many ranges it refused as blunt."""
    if not g:
        return ""
    refused = sum(not c["admitted"] for c in g["checked"])
    kept = "nothing to lose (none unscaled)" if g["kept"] is None else f"keeps {g['kept']:.0%}"
    line = (f"\nguard {g['set']} ({g['n_prompts']} prompts, {g['held']} {g['keeps']} unscaled): the chosen range {kept} "
            f"of them (at least {g['keep']:.0%} needed); {refused} range(s) refused as blunt in this run")
    if not g["admitted"]:
        line += ("\n[bold red]BLUNT:[/bold red] the chosen range breaks the guard: it is where the search started, and "
                 "no range the guard admits did better (try --survey or other --starts)")
    return line


def _span(ci, signed: bool = False) -> str:
    if not ci:
        return "–"
    f = (lambda v: f"{v:+g}") if signed else (lambda v: f"{v:g}")  # noqa: E731
    return f"{f(ci[0])} … {f(ci[1])}"


@_reports_as_text
def stability_table(report: dict) -> Table | None:
    """locate --starts/--resamples: where each start's searches ended, and the recommendation."""
    st = report.get("stability")
    if not st:
        return None
    rec = st["recommended"]
    t = Table(title=f"stability: {len(st['starts'])} start(s) × {st['resamples'] + 1} sample(s) of D_o · α {st['alpha']:g}",
              caption=f"recommended: layers {rec['range'][0]}–{rec['range'][1]} ({st['verdict']}; {rec['count']} refusals, "
                      f"95% CI {_span(rec.get('ci95'))}): {rec['why']}", header_style="bold")
    guarded = any("guard_kept" in e for e in st["ends"])
    for c in ("found range", "searches", "share", "refusals (full D_o)", "as good as the best") + (("guard kept",) if guarded else ()):
        t.add_column(c, justify="right")
    for e in st["ends"]:
        kept = (["–" if e["guard_kept"] is None else f"{e['guard_kept']:.0%}" + ("" if e["guard_admitted"] else " ✗")]
                if guarded else [])
        t.add_row(f"{e['range'][0]}–{e['range'][1]}", str(e["runs"]), f"{e['share']:.0%}", str(e["count"]),
                  "yes" if e["as_good_as_best"] else "no", *kept, style="bold yellow" if e["range"] == rec["range"] else None)
    return t


@_reports_as_text
def eval_table(report: dict) -> Table:
    limit = f"first {report['limit']} prompts per set" if report.get("limit") else "full sets"
    t = Table(title=f"{report['model']} · {report['backend']} · template {report['template']} · classifier "
                    f"{report['classifier']['name']} · {limit}", header_style="bold")
    for c in ("metric", "value", "95% CI", "n", "set / notes"):
        t.add_column(c, justify="right" if c in ("value", "95% CI", "n") else "left")
    for label, v, note in _metric_rows(report):
        ci = v.get("ci95") or [None, None]
        has_ci = ci[0] is not None and (ci[0] != ci[1] or v["n"] < 2)
        t.add_row(label, f"{v['value']:.3f}" if v["value"] is not None else "–",
                  f"{ci[0]:.3f}–{ci[1]:.3f}" if has_ci else "–", str(v["n"]), str(note))
    return t


def _metric_rows(report: dict):
    """(label, value dict, note) in the registry's order; every set of a per-set metric right under it."""
    for m in THRESHOLDS:
        for name, v in entries(report, m).items():
            where = (name or v.get("set") or "").removeprefix("bundled:")
            if m == "judge_harmful_rate":
                ag = v.get("agreement") or {}
                kappa = "–" if ag.get("kappa") is None else f"{ag['kappa']:.2f}"
                yield LABELS[m], v, (f"{where}: {v['judge']} ({v.get('judge_format', 'qi2023')}); agrees with "
                                     f"{ag.get('classifier')} on {(ag.get('agreement') or 0):.0%}, κ {kappa}; "
                                     f"unparseable {v['unparseable']}")
            elif m == "harmful_score":
                yield LABELS[m], v, f"{where}: {v['judge']}; unparseable {v['unparseable']}"
            else:
                yield LABELS[m], v, where


@_reports_as_text
def harden_table(r: dict, out) -> Table:
    evidence = "\n".join(f"[yellow]{escape(line)}[/yellow]" for line in r.get("evidence") or [])
    t = Table(title=f"harden · {r['method']}{' + LoRA' if r['lora'] else ''} · {r['input_model']} → {out}", show_header=False,
              caption=evidence or None, caption_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in (("frozen layers", r["layers"] if r["method"] != "full" else "none"),
                 ("frozen parameters", f"{r['frozen_parameters']:,} ({r['frozen_fraction']:.1%})"),
                 ("training rows", f"{r['data']['rows']} ({r['data']['examples']} examples)"),
                 ("steps", r["steps"]), ("train loss", f"{r['train_loss']:.4f}"), ("seconds", r["seconds"])):
        t.add_row(k, str(v))
    return t


@_reports_as_text
def check_table(result: dict, rows: list[dict]) -> Table:
    t = Table(title=f"check {result['candidate']} against {result['baseline']}", header_style="bold",
              caption="Δ: candidate − baseline with its 95% interval (paired: the same prompts, prompt by prompt)")
    for col in ("metric", "baseline", "candidate", "Δ (95% CI)", "margin", "verdict"):
        t.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    style = {"pass": "[green]pass[/green]", "regression": "[red]REGRESSION[/red]", "inconclusive": "[yellow]inconclusive[/yellow]"}
    for r in rows:
        fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        margin = f"Δ ≤ {r['limit']:+g}" if r["direction"] == "increase" else f"Δ ≥ {-r['limit']:+g}"
        ci = r.get("ci95") or [None, None]
        change = "–" if r["delta"] is None else f"{r['delta']:+.3f} ({ci[0]:+.3f}…{ci[1]:+.3f}){' p' if r.get('paired') else ''}"
        label = LABELS.get(r["metric"], r["metric"]) + (f" ({r['set'].removeprefix('bundled:')})" if r.get("set") else "")
        t.add_row(label, fmt(r["baseline"]), fmt(r["candidate"]), change, margin,
                  f"{style.get(r.get('verdict'), r.get('verdict'))} {r['reason']}")
    return t


@_reports_as_text
def compare_table(names: list[str], rows: list[tuple[str, list[str]]], settings: list[str] | None = None) -> Table:
    t = Table(title="safety-audit compare", header_style="bold")
    t.add_column("metric")
    for k, n in enumerate(names):
        t.add_column(f"{n}\n[dim]{settings[k]}[/dim]" if settings else n, justify="right")
    for m, vals in rows:
        t.add_row(m, *vals)
    return t


@_reports_as_text
def paired_table(names: list[str], rows: list[dict], classifier: str) -> Table:
    t = Table(title=f"paired: {names[0]} (A) vs {names[1]} (B) · {classifier} classifier · exact McNemar",
              caption="p < 0.05: the two models refuse different prompts more often than chance allows", header_style="bold")
    for col in ("metric", "prompts", "refused A", "refused B", "only A refused", "only B refused", "p"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows:
        t.add_row(r["metric"], str(r["n"]), f"{r['refusal_a']:.3f}", f"{r['refusal_b']:.3f}", str(r["only_a_refused"]),
                  str(r["only_b_refused"]), f"{r['p_value']:.2g}")
    return t


def doctor_table(info: dict) -> Table:
    t = Table(title="safety-audit doctor", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    ops = info["compiled_ops"]
    for k, v in info.items():
        if k in ("schema_version", "command", "compiled_ops", "cpu"):
            continue
        t.add_row(k, str(v))
    t.add_row("cpu", f"{info['cpu']['model']} ({', '.join(info['cpu']['flags']) or 'no AVX2'})")
    where = "CPU + CUDA" if ops["cuda"] else "CPU"
    t.add_row("compiled ops", f"[green]loaded ({where})[/green]" if ops["loaded"] else f"[red]not loaded[/red]: {ops['error']}")
    t.add_row("compiled sources", ops["source"])
    return t


@_reports_as_text
def attention_table(r: dict) -> Table:
    """Per layer, for each prompt: the share of the final token's attention on content words and on the
    template, and the prompt's most attended word (the template's tokens take most of the attention everywhere)."""
    rng = r.get("safety_layers")
    heads = r["heads"] if r["heads"] in ("mean", "max") else f"head {r['heads']}"
    table = Table(title=f"{r['model']} · final-token attention ({heads} of {r['n_heads']} heads) · template {r['template']}",
                  caption="content / template: share of attention; top: the prompt's most attended token"
                          + (f"; ▌ safety layers {rng[0]}–{rng[1]}" if rng else ""), header_style="bold")
    table.add_column("layer", justify="right")
    for p in r["prompts"]:
        for col in ("content", "template", "top"):
            table.add_column(f"{p['role'][:3]} {col}", justify="left" if col == "top" else "right", no_wrap=True)
    for i, layer in enumerate(r["layers"]):
        cells = [("▌" if rng and rng[0] <= layer <= rng[1] else " ") + str(layer)]
        for p in r["prompts"]:
            row, own = p["weights"][i], [k for k, role in enumerate(p["token_roles"]) if role != "template"]
            top = max(own or range(len(row)), key=row.__getitem__)
            cells += [f"{p['shares']['content'][i]:.2f}", f"{p['shares']['template'][i]:.2f}", p["tokens"][top]]
        table.add_row(*cells)
    return table
