"""PNG plots of reports (matplotlib, Agg): written atomically, never over an existing file without force."""

from __future__ import annotations

from pathlib import Path

from ..io.files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # a model path, prompt or token is text, never mathtext: "$\\foo$" in a prompt would otherwise be parsed
    # (and fail at savefig with a traceback) or drawn as a formula
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, force: bool) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    finally:
        _pyplot().close(fig)


def plot_scan(report: dict, path: str | Path, force: bool = False) -> Path:
    return _save(scan_figure(report), path, force)


def plot_locate(report: dict, path: str | Path, force: bool = False) -> Path:
    return _save(locate_figure(report), path, force)


def plot_attention(report: dict, path: str | Path, force: bool = False) -> Path:
    return _save(attention_figure(report), path, force)


def scan_figure(report: dict):
    """Two panels like the paper's Fig. 2: pair cosines per layer; angle gap with its 95% CI."""
    plt = _pyplot()
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
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_ylabel("mean cosine similarity")
    ax1.set_title("Final-token cosine similarity of prompt pairs")
    ax2.axhline(0, color="black", lw=0.8)
    paper = (report.get("gap_definition") or {}).get("name") == "angle-of-mean-cosine"
    ax2.set_ylabel("∠(mean cos N-M) − ∠(mean cos N-N)  [degrees]" if paper else "mean ∠(N-M) − mean ∠(N-N)  [degrees]")
    # with no range, say so on the picture too: an absent band could be read as a plotting fault
    ax2.set_title("Angle gap between normal and malicious prompts" + ("" if rng else
                  "\nno initial safety-layer range: no layer rises above the early baseline"),
                  color="black" if rng else "#b71c1c", fontsize=None if rng else 10)
    ax1.legend(fontsize=8, ncol=2)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{report['model']}  ·  {report['backend']}  ·  template: {report['template']}", fontsize=10)
    fig.tight_layout()
    return fig


def locate_figure(report: dict):
    """Refusal count per swept range (upper sweep, lower sweep, controls) against the baseline; with a
    survey, a first panel of refusals per surveyed window."""
    plt = _pyplot()
    sv, st = report.get("survey"), report.get("stability")
    cols = 3 if sv else 2
    fig = plt.figure(figsize=(17 if sv else 12, 4.2 + (0.9 + 0.32 * (len(st["starts"]) + 1) if st else 0)), dpi=130)
    grid = fig.add_gridspec(2 if st else 1, cols, height_ratios=[4.2, 0.9 + 0.32 * (len(st["starts"]) + 1)] if st else None)
    axes = [fig.add_subplot(grid[0, 0])]
    axes += [fig.add_subplot(grid[0, k], sharey=axes[0]) for k in range(1, cols)]
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
        blunt = [r for r in rows if r.get("blunt")]
        if blunt:  # better by count, refused by the guard: where the search would have gone without it
            ax.plot([r["range"][idx] for r in blunt], [r["count"] for r in blunt], "x", color="black", ms=9, mew=2,
                    label="refused by the guard (blunt)")
        ax.axhline(base, color="black", lw=1, ls="--", label="baseline (α = 1)")
        ax.axvline(report["safety_layers"][idx], color="#ffb300", lw=6, alpha=0.4, label="chosen bound")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for k, c in enumerate(report["controls"] or []):  # each control as the layers it spans, at its count
        (a, b), n = c["range"], c["count"]
        axes[0].plot([a, b], [n, n], color="#7f7f7f", lw=3, solid_capstyle="butt",
                     label="controls (layers spanned)" if k == 0 else None)
        axes[0].annotate(f"{a}–{b}: {n}", ((a + b) / 2, n), xytext=(0, 4), textcoords="offset points",
                         ha="center", va="bottom", fontsize=7, color="#555555")
    for ax in axes:
        ax.axhline(report["count"], color="#ffb300", lw=1, ls=":", label=f"chosen range: {report['count']} refusals")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.axes[0].set_ylabel(f"refusals on {report['n_prompts']} over-refusal prompts")
    axes[0].legend(fontsize=7.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)  # above: no data under it
    if st:
        _stability_panel(fig.add_subplot(grid[1, :]), st, report["n_layers"])
    f = report["safety_layers"]
    fig.suptitle(f"{report['model']} · α = {report['alpha']:g} · {report['classifier']['name']} classifier · "
                 f"safety layers {f[0]}–{f[1]}", fontsize=10)
    fig.tight_layout()
    return fig


def _stability_panel(ax, st: dict, n_layers: int) -> None:
    """Per start (rows) and over all searches (last row): the share of searches whose found range holds
    each layer; the recommended range outlined."""
    labels = [s["label"] for s in st["starts"]] + ["all searches"]
    grid = [st["by_start"][s["label"]] for s in st["starts"]] + [st["layer_frequency"]]
    ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest")
    for y, row in enumerate(grid):
        for x, v in enumerate(row):
            if v:
                ax.text(x, y, f"{v:.0%}" if v < 1 else "all", ha="center", va="center", fontsize=6.5,
                        color="white" if v > 0.6 else "black")
    a, b = st["recommended"]["range"]
    ax.add_patch(_pyplot().Rectangle((a - 0.5, -0.5), b - a + 1, len(grid), fill=False, ec="#ffb300", lw=2.5))
    ax.axhline(len(grid) - 1.5, color="black", lw=0.8)
    ax.set_yticks(range(len(grid)), [f"from {lb}" if lb != "all searches" else lb for lb in labels], fontsize=7)
    ax.set_xticks(range(n_layers))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(f"layer · share of searches ({st['resamples'] + 1} samples of D_o per start) ending with it inside · "
                  f"recommended {a}–{b} ({st['verdict']}, amber)")


ROLE_STYLE = {"content": ("#111111", "bold"), "function": ("#666666", "normal"), "template": ("#aaaaaa", "normal")}


def attention_figure(report: dict):
    """Figure 4 of the paper: layers × tokens heatmaps of the final token's attention, malicious and normal
    side by side, safety layers between dashed lines; a third panel: the share on content words per layer.
    With --scale, a second row shows the same with the range scaled. √ colour scale: the first token takes
    most of the attention in every layer (an attention sink), and a linear scale would show nothing else."""
    plt = _pyplot()
    from matplotlib.colors import PowerNorm

    prompts, layers = report["prompts"], report["layers"]
    rows = [("weights", "shares", "")] + ([("scaled_weights", "scaled_shares", "scaled")] if report.get("scale") else [])
    widths = [min(12.0, max(3.5, 0.16 * len(p["tokens"]))) for p in prompts] + [3.2]  # long prompts: smaller labels
    height = max(3.2, 0.2 * len(layers)) + 1.6
    fig, axes = plt.subplots(len(rows), 3, figsize=(sum(widths), height * len(rows)), dpi=130, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    vmax = max(max(max(r) for r in p[key]) for p in prompts for key, _, _ in rows)
    extent_y = (layers[-1] + 0.5, layers[0] - 0.5)
    sl = report.get("safety_layers")
    for r, (wkey, skey, tag) in enumerate(rows):
        what = (f"layers {report['scale']['layers'][0]}–{report['scale']['layers'][1]} × α {report['scale']['alpha']:g}"
                if tag else "as is")
        for c, p in enumerate(prompts):
            ax, T = axes[r][c], len(p["tokens"])
            im = ax.imshow(p[wkey], aspect="auto", cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=vmax),
                           extent=(-0.5, T - 0.5, *extent_y), interpolation="nearest")
            ax.set_xticks(range(T))
            ax.set_xticklabels(p["tokens"], rotation=90, fontsize=max(3, min(8, 72 * widths[c] / T * 0.9)))
            for label, role in zip(ax.get_xticklabels(), p["token_roles"]):
                label.set_color(ROLE_STYLE[role][0])
                label.set_fontweight(ROLE_STYLE[role][1])
            ax.set_ylabel("layer")
            ax.set_title(f"{p['role']} prompt ({what})", fontsize=9, color="#b71c1c" if p["role"] == "malicious" else "#0d47a1")
            _mark_layers(ax, sl)
        fig.colorbar(im, ax=axes[r][1], fraction=0.04, pad=0.02, label="attention weight (√ scale)")
        ax = axes[r][2]
        for p, color in zip(prompts, ("#d62728", "#1f77b4")):
            ax.plot(p[skey]["content"], layers, "-o", ms=2.5, color=color, label=f"{p['role']}: content words")
            ax.plot(p[skey]["template"], layers, ":", color=color, alpha=0.7, label=f"{p['role']}: template")
        ax.set_ylim(*extent_y)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the final token's attention")
        ax.grid(alpha=0.3)
        _mark_layers(ax, sl)
        ax.legend(fontsize=7, loc="lower right")
    heads = report["heads"] if report["heads"] in ("mean", "max") else f"head {report['heads']}"
    fig.suptitle(f"{report['model']} · final-token attention ({heads} of {report['n_heads']} heads) · template: "
                 f"{report['template']}" + (f" · safety layers {sl[0]}–{sl[1]} (dashed)" if sl else ""), fontsize=10)
    fig.tight_layout()
    return fig


def _mark_layers(ax, rng) -> None:
    ax.yaxis.get_major_locator().set_params(integer=True)
    if rng:
        for y in (rng[0] - 0.5, rng[1] + 0.5):
            ax.axhline(y, color="#00e5ff", lw=1.4, ls="--")
