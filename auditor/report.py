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
    if rng is None:
        return f"gap by layer {spark}   no initial safety-layer range: the gap never opens above the early-layer baseline"
    return f"gap by layer {spark}   initial safety-layer range: layers {rng[0]}–{rng[1]} (inclusive, 0-based)"


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
