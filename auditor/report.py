"""Rendering of reports: rich tables for the terminal, PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .io import atomic_write

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
    for r in report["layers"]:
        k = r["layer"]
        inside = rng is not None and rng[0] <= k <= rng[1]
        cells = [str(k), f"{r['cos_nn']:.4f}", f"{r['cos_mm']:.4f}", f"{r['cos_nm']:.4f}", f"{r['angle_gap_deg']:+.2f}",
                 f"{r['gap_ci95'][0]:+.2f}…{r['gap_ci95'][1]:+.2f}", gap_bar(r["angle_gap_deg"], scale, 14)]
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
        console.print(f"contrast {c['model']} ({c['backend']}): initial range "
                      + (f"{r[0]}–{r[1]}" if r else "none"))


def plot_scan(report: dict, path: str | Path, force: bool = False) -> Path:
    """Two panels like the paper's Fig. 2: pair cosines per layer; angle gap with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in report["layers"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=130)
    series = [(report, "", 1.0)]
    if report.get("contrast"):
        series.append((report["contrast"], " (contrast)", 0.45))
    for rep, suffix, alpha in series:
        ls = "-" if not suffix else "--"
        for key, label, color in (("cos_nn", "N-N", "#1f77b4"), ("cos_mm", "M-M", "#d62728"), ("cos_nm", "N-M", "#2ca02c")):
            ax1.plot([r["layer"] for r in rep["layers"]], [r[key] for r in rep["layers"]], ls, marker="o", ms=3,
                     color=color, alpha=alpha, label=label + suffix)
        xs = [r["layer"] for r in rep["layers"]]
        gap = [r["angle_gap_deg"] for r in rep["layers"]]
        ax2.plot(xs, gap, ls, marker="o", ms=3, color="#444444" if not suffix else "#9467bd", label="angle gap" + suffix)
        ax2.fill_between(xs, [r["gap_ci95"][0] for r in rep["layers"]], [r["gap_ci95"][1] for r in rep["layers"]],
                         color="#444444" if not suffix else "#9467bd", alpha=0.15 * alpha / 0.45 if suffix else 0.2,
                         label="95% CI" + suffix)
    if report.get("differential"):
        d = report["differential"]
        ax2.plot([x["layer"] for x in d], [x["diff_gap_deg"] for x in d], ":", color="#ff7f0e", marker="s", ms=3,
                 label="differential gap")
    rng = report["initial_range"]
    for ax in (ax1, ax2):
        if rng:
            ax.axvspan(rng[0] - 0.5, rng[1] + 0.5, color="#ffd54f", alpha=0.35, label="initial safety layers")
        ax.set_xlabel("layer (0-based)")
        ax.grid(alpha=0.3)
        ax.set_xlim(min(layers) - 0.5, max(layers) + 0.5)
    ax1.set_ylabel("mean cosine similarity")
    ax1.set_title("Final-token cosine similarity of prompt pairs")
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_ylabel("mean ∠(N-M) − mean ∠(N-N)  [degrees]")
    ax2.set_title("Angle gap between normal and malicious prompts")
    ax1.legend(fontsize=8, ncol=2)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{report['model']}  ·  {report['backend']}  ·  template: {report['template']}", fontsize=10)
    fig.tight_layout()

    def save(tmp: Path):
        fig.savefig(tmp, format="png")

    try:
        return atomic_write(path, save, force)
    finally:
        plt.close(fig)


def locate_table(report: dict) -> Table:
    a = report["alpha"]
    title = (f"{report['model']} · {report['backend']} · α = {a:g} · classifier {report['classifier']['name']} · "
             f"{report['n_prompts']} prompts of {report['over_refusal_set']}")
    final = report["safety_layers"]
    verdict = ("stands out from" if report["stands_out"] else "does NOT stand out from") + " equal-width controls"
    if report.get("gain", 1) <= 0:
        verdict = f"no range moved refusals the paper's way (α {'>' if a > 1 else '<'} 1: {'more' if a > 1 else 'fewer'})"
    t = Table(title=title, caption=f"baseline (unscaled): {report['baseline']} refusals   safety layers: {final[0]}–{final[1]} "
              f"({report['count']} refusals; {verdict})", header_style="bold")
    for c in ("phase", "range", "refusals", "Δ vs baseline"):
        t.add_column(c, justify="right")
    sv = report.get("survey")
    rows = [dict(w, phase=f"survey α {sv['alpha']:g}") for w in sv["windows"]] if sv else []
    rows += [dict(r, phase=f"α trial {r['alpha']:g}") for r in (report["alpha_choice"]["trials"] if isinstance(report["alpha_choice"], dict) else [])]
    rows += report["sweep"] + [dict(c, phase="control") for c in report["controls"]]
    for r in rows:
        hit = r["range"] == final and r["phase"] != "control"
        t.add_row(r["phase"], f"{r['range'][0]}–{r['range'][1]}", str(r["count"]), f"{r['count'] - report['baseline']:+d}",
                  style="bold yellow" if hit else ("dim" if r["phase"] == "control" else None))
    return t


def plot_locate(report: dict, path: str | Path, force: bool = False) -> Path:
    """Refusal count per swept range (upper sweep, lower sweep, controls) against the baseline; with a
    survey, a first panel of refusals per surveyed window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sv = report.get("survey")
    fig, axes = plt.subplots(1, 3 if sv else 2, figsize=(17 if sv else 12, 4.2), dpi=130, sharey=True)
    base = report["baseline"]
    if sv:
        ax, axes = axes[0], axes[1:]
        w = sv["windows"]
        ax.bar([r["range"][0] for r in w], [r["count"] for r in w], width=sv["width"] * 0.9, align="edge",
               color=["#ffb300" if r["range"] == report["start"] else "#9ecae1" for r in w], label=f"window × {sv['alpha']:g}")
        ax.axhline(base, color="black", lw=1, ls="--", label="baseline (α = 1)")
        ax.set_xlabel(f"survey: first layer of each {sv['width']}-layer window (start in amber)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax, phase, xlabel, idx in ((axes[0], "upper", "upper bound j (lower bound fixed)", 1),
                                   (axes[1], "lower", "lower bound i (upper bound fixed)", 0)):
        rows = [r for r in report["sweep"] if r["phase"] in (phase, "start")]
        rows.sort(key=lambda r: r["range"][idx])
        ax.plot([r["range"][idx] for r in rows], [r["count"] for r in rows], "o-", color="#d62728", label="scaled range")
        ax.axhline(base, color="black", lw=1, ls="--", label="baseline (α = 1)")
        ax.axvline(report["safety_layers"][idx], color="#ffb300", lw=6, alpha=0.4, label="chosen bound")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if report["controls"]:
        cx = [sum(c["range"]) / 2 for c in report["controls"]]
        axes[0].scatter(cx, [c["count"] for c in report["controls"]], marker="s", color="#7f7f7f", label="controls (window centre)")
    fig.axes[0].set_ylabel(f"refusals on {report['n_prompts']} over-refusal prompts")
    axes[0].legend(fontsize=8)
    f = report["safety_layers"]
    fig.suptitle(f"{report['model']} · α = {report['alpha']:g} · {report['classifier']['name']} classifier · "
                 f"safety layers {f[0]}–{f[1]}", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    finally:
        plt.close(fig)


def eval_table(report: dict) -> Table:
    from .check import LABELS, THRESHOLDS

    t = Table(title=f"{report['model']} · {report['backend']} · template {report['template']} · classifier "
                    f"{report['classifier']['name']}", header_style="bold")
    for c in ("metric", "value", "95% CI", "n", "set / notes"):
        t.add_column(c, justify="right" if c in ("value", "95% CI", "n") else "left")
    for m in THRESHOLDS:
        if m in report:
            v = report[m]
            ci = v.get("ci95") or [None, None]
            note = v.get("set", "")
            if m == "harmful_score":
                note = f"{v['judge']}; unparseable {v['unparseable']}"
            t.add_row(LABELS[m], f"{v['value']:.3f}" if v["value"] is not None else "–",
                      f"{ci[0]:.3f}–{ci[1]:.3f}" if ci[0] is not None else "–", str(v["n"]), str(note))
    for name, v in (report.get("over_refusal_by_set") or {}).items():
        if name != report["over_refusal_rate"]["set"]:
            t.add_row("over-refusal", f"{v['value']:.3f}", f"{v['ci95'][0]:.3f}–{v['ci95'][1]:.3f}", str(v["n"]), name)
    return t


def harden_table(r: dict, out) -> Table:
    t = Table(title=f"harden · {r['method']}{' + LoRA' if r['lora'] else ''} · {r['input_model']} → {out}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in (("frozen layers", r["layers"] if r["method"] != "full" else "none"),
                 ("frozen parameters", f"{r['frozen_parameters']:,} ({r['frozen_fraction']:.1%})"),
                 ("training rows", f"{r['data']['rows']} ({r['data']['examples']} examples)"),
                 ("steps", r["steps"]), ("train loss", f"{r['train_loss']:.4f}"), ("seconds", r["seconds"])):
        t.add_row(k, str(v))
    return t
