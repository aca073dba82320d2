"""`locate`: precise safety-layer bounds by scaling a layer range's weights by α and counting
over-refusals (DESIGN §1.2, the paper's Table 1).

Progressive search, as the paper: from [i, j], with α > 1 fix i and sweep the upper bound j, j+1, …
keeping the bound with the most refusals; then fix it and sweep the lower bound i, i−1, … likewise.
α < 1 mirrors it with minima. Ties keep the narrower range. A sweep stops after `patience` steps without
a new best (0 = to the end of the model). Every count is journaled, so a killed run resumes.

The start comes from --start, a scan report, a fresh scan, or a survey: equal-width windows tiled over
the whole model, each scaled in turn, the start being the window that moves refusals most the paper's
way; the search from a window then also drops end layers that add nothing. A survey is for models whose
cosine gap opens away from the over-refusal lever (the reference model: gap at 19-20, while early and
middle windows raise refusals).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import AuditError
from .models import file_fingerprint, open_backend, resolve_model
from .prompts import check_template, load_prompts
from .refusal import make_classifier

SCHEMA_VERSION = 1
ALPHA_STEP, ALPHA_MAX_STEPS = 0.05, 4
SURVEY_ALPHA = 1.2  # the edge of the paper's α range: a window's effect shows even where it is small


@dataclass
class LocateConfig:
    model: str | None = None
    backend: str = "auto"
    template: str = "alpaca"
    over_refusal: str = "over-rejection"  # bundled set or file (D_o)
    limit: int | None = 150  # the first N prompts of D_o (None: all)
    classifier: str = "prefix"
    max_new_tokens: int = 16
    alpha: float | None = None  # None: automatic
    start: tuple[int, int] | None = None
    from_scan: str | None = None
    survey: int | None = None  # window width: start from the best of equal-width windows over the model
    patience: int = 3
    controls: bool = True
    scale_o_proj: bool = True  # False under --compat paper (the authors' code never scaled o_proj)
    compat: str | None = None
    threads: int | None = None
    journal: str | None = None


def paper_compat(cfg: LocateConfig) -> LocateConfig:
    """--compat paper: greedy 16 tokens, prefix classifier, o_proj unscaled, alpaca template."""
    cfg.compat, cfg.classifier, cfg.max_new_tokens, cfg.scale_o_proj, cfg.template = "paper", "prefix", 16, False, "alpaca"
    return cfg


class Journal:
    """Append-only JSONL of finished counts, keyed by everything that determines a count."""

    def __init__(self, path: Path | None, key: str):
        self.path, self.key, self.entries = path, key, {}
        if path and path.is_file():
            text = path.read_text()
            if text and not text.endswith("\n"):  # a line cut by a kill: close it so appends stay whole
                with open(path, "a") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if e.get("key") == key:
                    self.entries[(tuple(e["range"]) if e["range"] else None, e["alpha"])] = e["count"]

    def get(self, rng, alpha):
        return self.entries.get((tuple(rng) if rng else None, alpha))

    def record(self, rng, alpha, count):
        self.entries[(tuple(rng) if rng else None, alpha)] = count
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": self.key, "range": list(rng) if rng else None, "alpha": alpha, "count": count}) + "\n")
                f.flush()
                os.fsync(f.fileno())


class RefusalCounter:
    """R(model scaled on `range` by alpha, D_o): the number of D_o prompts the classifier calls refusals."""

    def __init__(self, backend, prompts, classifier, template, scale_o_proj, journal: Journal, reporter):
        self.backend, self.prompts, self.classifier = backend, prompts, classifier
        self.template, self.scale_o_proj, self.journal, self.reporter = template, scale_o_proj, journal, reporter
        self.computed = 0

    def __call__(self, rng: tuple[int, int] | None, alpha: float = 1.0) -> int:
        alpha = round(float(alpha), 6)
        hit = self.journal.get(rng, alpha if rng else 1.0)
        if hit is not None:
            return hit
        label = "baseline" if rng is None else f"layers {rng[0]}–{rng[1]} × {alpha:g}"
        self.reporter.start(f"{label} · {self.classifier.name}", len(self.prompts))
        ctx = self.backend.scaled(range(rng[0], rng[1] + 1), alpha, self.scale_o_proj) if rng else nullcontext()
        with ctx:
            n = sum(self.classifier.decide(self.backend, self.prompts, self.template, self.reporter.advance))
        self.computed += 1
        self.journal.record(rng, alpha if rng else 1.0, n)
        return n


def _sweep(count, candidates, alpha, best, better, patience, phase, rows):
    """Count each candidate range in turn; return the best count and range (None if none beat `best`)."""
    best_rng, misses = None, 0
    for rng in candidates:
        c = count(rng, alpha)
        rows.append({"phase": phase, "range": list(rng), "count": c})
        if better(c, best):
            best, best_rng, misses = c, rng, 0
        else:
            misses += 1
            if patience and misses >= patience:
                break
    return best, best_rng


def progressive_search(count, start: tuple[int, int], n_layers: int, alpha: float, patience: int, trim: bool = False):
    """The paper's two sweeps; returns (range, its count, rows of the sweep). `trim`: then drop end layers
    while the count stays as good (a survey window is coarse: the block may begin or end inside it)."""
    better = (lambda a, b: a > b) if alpha > 1 else (lambda a, b: a < b)
    i, j = start
    best = count((i, j), alpha)
    rows = [{"phase": "start", "range": [i, j], "count": best}]
    best, rng = _sweep(count, [(i, jj) for jj in range(j + 1, n_layers)], alpha, best, better, patience, "upper", rows)
    j = rng[1] if rng else j
    best, rng = _sweep(count, [(ii, j) for ii in range(i - 1, -1, -1)], alpha, best, better, patience, "lower", rows)
    i = rng[0] if rng else i
    for side in ((1, 0), (0, -1)) if trim else ():
        while i < j:
            c = count((i + side[0], j + side[1]), alpha)
            rows.append({"phase": "trim", "range": [i + side[0], j + side[1]], "count": c})
            if better(best, c):
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


def survey(count, n_layers: int, width: int, alpha: float, baseline: int) -> tuple[tuple[int, int], list[dict]]:
    """Count every window at `alpha`; return the one that moves refusals most the paper's way, and all rows."""
    sign = 1 if alpha > 1 else -1
    rows = [{"range": list(w), "count": count(w, alpha)} for w in survey_windows(n_layers, width)]
    best = max(rows, key=lambda r: (sign * (r["count"] - baseline), -r["range"][0]))
    return tuple(best["range"]), rows


def _start_range(cfg: LocateConfig, reporter) -> tuple[tuple[int, int], str]:
    if cfg.start:
        return tuple(cfg.start), "--start"
    if cfg.from_scan:
        p = Path(cfg.from_scan)
        try:
            rep = json.loads(p.read_text())
            rng, diff = rep["initial_range"], rep.get("differential_range")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise AuditError("not a readable scan report (JSON with initial_range)", p) from None
        if rng:
            return (int(rng[0]), int(rng[1])), f"scan report {p}"
        if diff:  # a --contrast scan: start where alignment moved the gap most
            return (int(diff[0]), int(diff[1])), f"scan report {p} (differential range; no initial range)"
        raise AuditError("the scan report has no initial range and no differential range (scan with --contrast "
                         "BASE_MODEL, or pass --start i-j or --survey)", p)
    from .scan import ScanConfig, run_scan

    rep = run_scan(ScanConfig(model=cfg.model, backend=cfg.backend, template=cfg.template, threads=cfg.threads), reporter)
    if not rep["initial_range"]:
        raise AuditError("a fresh scan found no initial safety-layer range; pass --start i-j or --survey")
    return tuple(rep["initial_range"]), "fresh scan"


def run_locate(cfg: LocateConfig, reporter=None) -> dict:
    from .scan import _Silent

    reporter = reporter or _Silent()
    check_template(cfg.template)
    if cfg.alpha is not None and not (cfg.alpha > 0 and math.isfinite(cfg.alpha)):
        raise AuditError(f"alpha must be a positive number, got {cfg.alpha}")
    if cfg.alpha == 1.0:
        raise AuditError("alpha = 1 scales nothing; use a value like 1.1 or 0.9")
    if sum(x is not None for x in (cfg.start, cfg.from_scan, cfg.survey)) > 1:
        raise AuditError("give one of --start, --from-scan and --survey")
    if cfg.max_new_tokens < 1 or cfg.patience < 0 or any(v is not None and v < 1 for v in (cfg.limit, cfg.survey)):
        raise AuditError("--max-new-tokens, --limit and --survey must be >= 1, --patience >= 0")
    model = resolve_model(cfg.model)
    d_o = load_prompts(cfg.over_refusal)
    prompts = list(d_o.prompts[: cfg.limit] if cfg.limit else d_o.prompts)
    classifier = make_classifier(cfg.classifier, cfg.max_new_tokens)
    t0 = time.perf_counter()
    reporter.status(f"loading {model.label}")
    backend = open_backend(model, cfg.backend, threads=cfg.threads)
    try:
        K = backend.n_layers
        if cfg.survey is None:
            start, start_from = _start_range(cfg, reporter)
            if not (0 <= start[0] <= start[1] < K):
                raise AuditError(f"start range {start[0]}-{start[1]} is outside the model (layers 0..{K - 1})")
        elif cfg.survey > K:
            raise AuditError(f"--survey width {cfg.survey} is wider than the model ({K} layers)")
        fp = file_fingerprint(model.path) if model.is_gguf else str(model.path)
        key = hashlib.sha256(json.dumps([fp, backend.name, cfg.template, classifier.describe(), prompts,
                                         cfg.scale_o_proj]).encode()).hexdigest()[:24]
        journal = Journal(Path(cfg.journal) if cfg.journal else None, key)
        count = RefusalCounter(backend, prompts, classifier, cfg.template, cfg.scale_o_proj, journal, reporter)
        baseline = count(None)
        surveyed = None
        if cfg.survey is not None:
            s_alpha = cfg.alpha or round(1 + room_to_move(baseline, len(prompts)) * (SURVEY_ALPHA - 1), 2)
            start, windows = survey(count, K, cfg.survey, s_alpha, baseline)
            surveyed = {"alpha": s_alpha, "width": cfg.survey, "windows": windows}
            start_from = f"survey: {len(windows)} windows of {cfg.survey} at α {s_alpha:g}"
        trials: list[dict] = []
        alpha = surveyed["alpha"] if surveyed else cfg.alpha  # the survey already showed its α moves refusals
        if alpha is None:
            alpha, trials = choose_alpha(count, start, baseline, len(prompts))
        final, best, rows = progressive_search(count, start, K, alpha, cfg.patience, trim=surveyed is not None)
        controls = [{"range": list(r), "count": count(r, alpha)} for r in control_ranges(final, K)] if cfg.controls else []
        # the paper's effect (α > 1: more refusals), larger than any control's move in either direction
        gain = (best - baseline) * (1 if alpha > 1 else -1)
        stands_out = bool(controls) and gain > 0 and all(gain > abs(c["count"] - baseline) for c in controls)
    finally:
        backend.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"safety-audit {__version__}",
        "command": "locate",
        "model": model.label,
        "backend": backend.name,
        "template": cfg.template,
        "compat": cfg.compat,
        "scale_o_proj": cfg.scale_o_proj,
        "n_layers": K,
        "over_refusal_set": d_o.name,
        "n_prompts": len(prompts),
        "classifier": classifier.describe(),
        "alpha": alpha,
        "alpha_choice": "given" if cfg.alpha is not None else "survey" if surveyed else {"rule": "step 0.05 from 1 until the count moves the paper's way "
                                                                 "(alpha > 1: up) by >= max(3, 5% of D_o)", "trials": trials},
        "start": list(start),
        "start_from": start_from,
        "survey": surveyed,
        "baseline": baseline,
        "sweep": rows,
        "safety_layers": list(final),
        "count": best,
        "controls": controls,
        "gain": gain,
        "stands_out": stands_out,
        "counts_computed": count.computed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
