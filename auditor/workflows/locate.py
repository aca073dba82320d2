"""`locate`: precise safety-layer bounds by scaling a layer range's weights by α and counting
over-refusals (docs/METHOD.md §1.2, the paper's Table 1). The search itself is `core.search`; this module
counts refusals on a backend, journals every count (a killed run resumes) and writes the report.

The start comes from --start, a scan report, a fresh scan, or a survey (equal-width windows tiled over the
whole model, for models whose cosine gap opens away from the over-refusal lever: the reference model's gap
is at 19-20, while early and middle windows raise refusals).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from ..backends import GENERATION, WEIGHT_SCALING, Backend, library_version
from ..core.refusal import CLASSIFIERS, canonical_classifier, make_classifier
from ..core.stability import PairedCI, as_bits
from ..core.search import SURVEY_ALPHA, choose_alpha, control_ranges, landscape, progressive_search, room_to_move, survey
from ..errors import AuditError
from ..io.cache import Journal, cached_journal, sha256_json
from ..io.config import check_least, parse_ranges, setting
from ..io.models import layer_count
from ..io.prompts import check_template, load_prompts
from ..io.reports import Report
from .options import ModelOptions, Target
from .locate_guard import GUARD_KEEP, GUARD_LIMIT, GUARD_SETS, Guard, default_guard_set
from .locate_stability import annotate_cis, auto_starts, paired_difference, run_stability
from .reporting import Silent
from ..training.paper import scaled_by_their_code
from .scan import ScanConfig, run_scan


@dataclass
class LocateConfig(ModelOptions):
    over_refusal: str = setting("over-rejection", "Over-refusal set D_o: a bundled set (over-rejection, xstest-safe) or a file.")
    limit: int | None = setting(150, "Use the first N prompts of D_o (0 = all).", least=0)
    classifier: str = setting("keyword", "; ".join(f"{n}: {e.help}" for n, e in CLASSIFIERS.items()) + ".",
                              choices="classifiers", parse="classifier")
    max_new_tokens: int = setting(16, "Greedy tokens per answer for the keyword classifier (the paper: 16).", least=1)
    alpha: float | None = setting(None, "Scaling factor (>1 or <1). Default: automatic (steps of 0.05 from 1).")
    start: tuple[int, int] | None = setting(None, "Start range i-j (inclusive, 0-based). Default: --from-scan or a fresh scan.",
                                            metavar="i-j", parse="range")
    from_scan: str | None = setting(None, "Start from a scan report's initial (or differential) range.", metavar="SCAN.json")
    survey: int | None = setting(None, "Start from the best of W-layer windows (default 2) scaled in turn over the whole model.",
                                 flag_value=2, metavar="[W]", least=1)
    patience: int = setting(3, "Stop a sweep after N steps without a new best (0 = to the end).", least=0)
    controls: bool = setting(True, "Skip the equal-width control ranges.")
    scale_o_proj: bool = setting(True, "Scale the attention output projection too (off under --compat paper).", cli=False)
    compat: str | None = setting(None, "paper: greedy 16 tokens, keyword classifier, o_proj unscaled, alpaca template.",
                                 choices=("paper",))
    journal: str | None = setting(None, "JSONL journal of finished counts (a killed run resumes from it).", cli=False)
    starts: tuple | str | None = setting(None, "Also search from these starts ('i-j,i-j' or 'auto': the survey's next "
                                         "windows) for the stability map.", metavar="i-j,...|auto")
    resamples: int = setting(0, "Re-run every search on N bootstrap resamples of D_o for the stability map.", least=0)
    start_as_given: tuple[int, int] | None = setting(None, "--start before --compat paper read it.", cli=False)
    guard: str | None = setting(None, f"Guard set a range must not break: a bundled set or a file. Default: "
                                f"{GUARD_SETS['down']} (alpha < 1: harmful, keep refusing), {GUARD_SETS['up']} "
                                "(alpha > 1: benign, keep answering).", metavar="SET|FILE")
    guard_limit: int = setting(GUARD_LIMIT, "Use the first N prompts of the guard set (0 = all).", least=0)
    guard_keep: float | None = setting(None, f"Share of the guard set's refusals (alpha < 1) or answers (alpha > 1) a "
                                       f"range must keep to be chosen; 0 = no guard. Default {GUARD_KEEP:g}, 0 under "
                                       "--compat paper (the authors had none).", least=0)


def paper_compat(cfg: LocateConfig) -> LocateConfig:
    """--compat paper: greedy 16 tokens, keyword classifier, o_proj unscaled, alpaca template, and --start i-j
    read as the authors' scaling code reads begin and end: range(i, j), layers i..j-1 (training/paper.py). A new
    config (the caller's is left as given); applied once (a config it made comes back unchanged)."""
    cfg = replace(cfg, compat="paper", classifier="keyword", max_new_tokens=16, scale_o_proj=False, template="alpaca")
    if cfg.start and cfg.start_as_given is None:
        cfg = replace(cfg, start_as_given=cfg.start, start=scaled_by_their_code(*cfg.start))
    return cfg


class CountJournal:
    """Finished counts keyed by everything that determines a count, with each count's per-prompt verdicts
    ('0'/'1' per D_o prompt: what the CIs and the resampled searches are computed from); `io.cache.Journal`
    underneath. Entries from before verdicts were kept still give their count."""

    def __init__(self, path: Path | None, key: str):
        self.journal, self.key, self.entries = Journal(path), key, {}
        for e in self.journal.rows():
            if e.get("key") == key:
                rid = (tuple(e["range"]) if e.get("range") else None, e.get("alpha"))
                if e.get("refused") or rid not in self.entries:
                    self.entries[rid] = (e["count"], e.get("refused"))

    @staticmethod
    def _id(rng, alpha):
        return (tuple(rng) if rng else None, alpha if rng else 1.0)

    def get(self, rng, alpha) -> tuple[int, str | None] | None:
        return self.entries.get(self._id(rng, alpha))

    def record(self, rng, alpha, count: int, bits: str):
        rid = self._id(rng, alpha)
        self.entries[rid] = (count, bits)
        self.journal.append({"key": self.key, "range": list(rid[0]) if rid[0] else None, "alpha": rid[1], "count": count,
                             "refused": bits})


class RefusalCounter:
    """R(model scaled on `range` by alpha, D_o): the number of D_o prompts the classifier calls refusals."""

    def __init__(self, backend, prompts, classifier, template, scale_o_proj, journal: CountJournal, reporter,
                 what: str = ""):
        self.backend, self.prompts, self.classifier = backend, prompts, classifier
        self.template, self.scale_o_proj, self.journal, self.reporter = template, scale_o_proj, journal, reporter
        self.computed, self.what = 0, what  # what: a label for the progress bar ("guard advbench-train: ")

    def __call__(self, rng: tuple[int, int] | None, alpha: float = 1.0) -> int:
        hit = self.journal.get(rng, round(float(alpha), 6))
        return hit[0] if hit is not None else self._run(rng, alpha)[0]

    def bits(self, rng: tuple[int, int] | None, alpha: float = 1.0) -> str:
        """Which D_o prompts were refused, '0'/'1' each (counted again if the journal has the count only)."""
        hit = self.journal.get(rng, round(float(alpha), 6))
        return hit[1] if hit is not None and hit[1] else self._run(rng, alpha)[1]

    def _run(self, rng, alpha) -> tuple[int, str]:
        alpha = round(float(alpha), 6)
        label = "baseline" if rng is None else f"layers {rng[0]}–{rng[1]} × {alpha:g}"
        self.reporter.start(f"{self.what}{label} · {self.classifier.name}", len(self.prompts))
        ctx = self.backend.scaled(range(rng[0], rng[1] + 1), alpha, self.scale_o_proj) if rng else nullcontext()
        with ctx:
            bits = as_bits(self.classifier.decide(self.backend, self.prompts, self.template, self.reporter.advance))
        self.computed += 1
        self.journal.record(rng, alpha, bits.count("1"), bits)
        return bits.count("1"), bits


def _start_range(cfg: LocateConfig, target: Target, reporter) -> tuple[tuple[int, int], str]:
    if cfg.start:
        given = cfg.start_as_given
        return tuple(cfg.start), "--start" + (f" {given[0]}-{given[1]}, read as the authors' range({given[0]}, "
                                              f"{given[1]})" if given else "")
    if cfg.from_scan:
        p = Path(cfg.from_scan)
        try:
            rep = json.loads(p.read_text())
            rng, diff = rep["initial_range"], rep.get("differential_range")
        except (OSError, json.JSONDecodeError, RecursionError, KeyError, TypeError, AttributeError):
            raise AuditError("not a readable scan report (JSON with initial_range)", p) from None
        if rng:
            return (int(rng[0]), int(rng[1])), f"scan report {p}"
        if diff:  # a --contrast scan: start where alignment moved the gap most
            return (int(diff[0]), int(diff[1])), f"scan report {p} (differential range; no initial range)"
        raise AuditError("the scan report has no initial range and no differential range (scan with --contrast "
                         "BASE_MODEL, or pass --start i-j or --survey)", p)
    # with locate's own backend, left loaded for the counts: one model in memory, loaded once
    rep = run_scan(ScanConfig(model=cfg.model, backend=target.backend_name, template=cfg.template, threads=cfg.threads,
                              batch=cfg.batch, device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map), reporter, target)
    if not rep["initial_range"]:
        raise AuditError("a fresh scan found no initial safety-layer range; pass --start i-j or --survey")
    return tuple(rep["initial_range"]), "fresh scan"


def _parse_starts(value) -> tuple | str | None:
    """--starts: 'auto' or 'i-j,i-j,...' (ranges already parsed pass through)."""
    if value is None or value == "auto" or not isinstance(value, str):
        return value
    return parse_ranges(value, "--starts", "'auto'")


def check_config(cfg: LocateConfig) -> LocateConfig:
    """Every option checked before anything loads; returns the config normalized (a new one: a library caller's
    config is never changed under it)."""
    if cfg.compat == "paper":
        cfg = paper_compat(cfg)
    elif cfg.compat is not None:
        raise AuditError(f"unknown compat mode '{cfg.compat}' (choose paper)")
    cfg = replace(cfg, starts=_parse_starts(cfg.starts), classifier=canonical_classifier(cfg.classifier),
                  limit=cfg.limit or None)  # limit 0: all of D_o
    check_template(cfg.template)
    if cfg.alpha is not None and not (cfg.alpha > 0 and math.isfinite(cfg.alpha)):
        raise AuditError(f"alpha must be a positive number, got {cfg.alpha}")
    if cfg.alpha == 1.0:
        raise AuditError("alpha = 1 scales nothing; use a value like 1.1 or 0.9")
    if sum(x is not None for x in (cfg.start, cfg.from_scan, cfg.survey)) > 1:
        raise AuditError("give one of --start, --from-scan and --survey")
    check_least(cfg)
    if cfg.guard_keep is None:
        cfg = replace(cfg, guard_keep=0.0 if cfg.compat == "paper" else GUARD_KEEP)
    if cfg.guard_keep > 1:
        raise AuditError(f"--guard-keep is a share of the guard set's verdicts, at most 1 (got {cfg.guard_keep:g})")
    return cfg


@dataclass
class Search:
    """What the search found, before it becomes a report."""

    start: tuple[int, int]
    start_from: str
    surveyed: dict | None
    alpha: float
    trials: list[dict]
    rows: list[dict]
    final: tuple[int, int]
    best: int
    baseline: int
    controls: list[dict]
    guard: Guard | None


def _search(cfg: LocateConfig, backend: Backend, count, n_prompts: int, reporter,
            started: tuple[tuple[int, int], str] | None, make_guard) -> Search:
    """The survey (if asked), α, the progressive search and the controls; `make_guard(alpha)`: the search's
    guard once the direction is known (None: no guard)."""
    K = backend.n_layers
    if cfg.survey is not None and cfg.survey > K:
        raise AuditError(f"--survey width {cfg.survey} is wider than the model ({K} layers)")
    if cfg.survey is None:
        start, start_from = started
        if not (0 <= start[0] <= start[1] < K):
            raise AuditError(f"start range {start[0]}-{start[1]} is outside the model (layers 0..{K - 1})")
    baseline = count(None)
    surveyed = None
    if cfg.survey is not None:
        s_alpha = cfg.alpha or round(1 + room_to_move(baseline, n_prompts) * (SURVEY_ALPHA - 1), 2)
        guard = make_guard(s_alpha)
        start, windows = survey(count, K, cfg.survey, s_alpha, baseline, guard)
        surveyed = {"alpha": s_alpha, "width": cfg.survey, "windows": windows}
        start_from = f"survey: {len(windows)} windows of {cfg.survey} at α {s_alpha:g}"
    trials: list[dict] = []
    alpha = surveyed["alpha"] if surveyed else cfg.alpha  # the survey already showed its α moves refusals
    if alpha is None:
        alpha, trials = choose_alpha(count, start, baseline, n_prompts)
    if surveyed is None:
        guard = make_guard(alpha)
    final, best, rows = progressive_search(count, start, K, alpha, cfg.patience, trim=surveyed is not None,
                                           admissible=guard)
    sign = 1 if alpha > 1 else -1
    controls = [{"range": list(r), "count": count(r, alpha)} for r in control_ranges(final, K)] if cfg.controls else []
    for c in controls:  # a control that moves refusals further only by breaking the guard is no rival either
        if guard is not None and sign * (c["count"] - best) > 0 and not guard(c["range"]):
            c["blunt"] = True
    return Search(start, start_from, surveyed, alpha, trials, rows, final, best, baseline, controls, guard)


@dataclass
class LocateReport(Report):
    template: str
    compat: str | None
    scale_o_proj: bool
    n_layers: int
    over_refusal_set: str
    n_prompts: int
    classifier: dict
    alpha: float
    alpha_choice: str | dict
    start: list[int]
    start_from: str
    survey: dict | None
    baseline: int
    sweep: list[dict]
    safety_layers: list[int]
    count: int
    controls: list[dict]
    gain: int
    stands_out: bool
    landscape: dict
    guard: dict | None
    baseline_ci95: list[float]
    bootstrap: dict
    stability: dict | None
    counts_computed: int
    seconds: float


def _stability(cfg: LocateConfig, n_layers: int, count, s: Search, ci, reporter) -> dict | None:
    """--starts / --resamples: the search again from other starts and on resamples of D_o."""
    if not cfg.starts and not cfg.resamples:
        return None
    windows = (s.surveyed or {}).get("windows")
    starts = auto_starts(n_layers, s.start, windows, s.alpha) if cfg.starts == "auto" else list(cfg.starts or [])
    for a, b in starts:
        if not b < n_layers:
            raise AuditError(f"start range {a}-{b} is outside the model (layers 0..{n_layers - 1})")
    label = "survey" if s.surveyed else f"{s.start[0]}-{s.start[1]}"
    primary = {"label": label, "range": s.start, "survey_width": (s.surveyed or {}).get("width")}
    return run_stability(count, n_layers, s.alpha, cfg.patience, primary, starts, cfg.resamples, ci, reporter, s.guard)


ALPHA_RULE = "step 0.05 from 1 until the count moves the paper's way (alpha > 1: up) by >= max(3, 5% of D_o)"


def count_key(cfg, target: Target, classifier, prompts: list[str]) -> str:
    """What determines a refusal count: the model's content, the backend and its library's version, the
    template, the classifier's content (its hash) and token budget, the prompts, the maps scaled, the precision."""
    backend = target.backend_name
    return sha256_json([target.sha256, backend, library_version(backend), cfg.template, classifier.describe(), prompts,
                        cfg.scale_o_proj, *target.precision])[:24]


def run_locate(cfg: LocateConfig, reporter=None) -> dict:
    reporter = reporter or Silent()
    cfg = check_config(cfg)
    target = Target.resolve(cfg, (GENERATION, WEIGHT_SCALING))
    stated = layer_count(target.ref)
    if cfg.start and stated and not cfg.start[1] < stated:
        raise AuditError(f"start range {cfg.start[0]}-{cfg.start[1]} is outside the model (layers 0..{stated - 1})")
    if cfg.survey and stated and cfg.survey > stated:
        raise AuditError(f"--survey width {cfg.survey} is wider than the model ({stated} layers)")
    d_o = load_prompts(cfg.over_refusal)
    prompts = list(d_o.prompts[: cfg.limit] if cfg.limit else d_o.prompts)
    classifier = make_classifier(cfg.classifier, cfg.max_new_tokens)
    guard_given = load_prompts(cfg.guard) if cfg.guard and cfg.guard_keep else None  # a bad file fails before loading
    t0 = time.perf_counter()
    with target:
        backend = target.backend(reporter)
        # refused before the scan and the counts: a family whose layers cannot be scaled (a mixture of experts),
        # or an α the search may apply to any layer that overflows
        backend.check_scaling(range(backend.n_layers), cfg.alpha or 1.0, cfg.scale_o_proj)
        started = _start_range(cfg, target, reporter) if cfg.survey is None else None
        backend.prepare_scaling()

        def counter(on: list[str], what: str = "") -> RefusalCounter:
            """Refusals on these prompts (D_o, or the guard set), journaled under a key of their own."""
            key = count_key(cfg, target, classifier, on)
            journal = CountJournal(Path(cfg.journal) if cfg.journal else cached_journal("locate", key), key)
            return RefusalCounter(backend, on, classifier, cfg.template, cfg.scale_o_proj, journal, reporter, what)

        def make_guard(alpha: float) -> Guard | None:
            if not cfg.guard_keep:
                return None
            gset = guard_given or load_prompts(default_guard_set(alpha))
            name = gset.name.removeprefix("bundled:")
            g_prompts = list(gset.prompts[: cfg.guard_limit] if cfg.guard_limit else gset.prompts)
            return Guard(counter(g_prompts, what=f"guard {name}: "), alpha, cfg.guard_keep, name)

        count = counter(prompts)
        s = _search(cfg, backend, count, len(prompts), reporter, started, make_guard)
        ci = PairedCI(len(prompts))
        cis = annotate_cis(count, [(s.surveyed or {}).get("windows", []), s.trials, s.rows, s.controls],
                           lambda r: r.get("alpha", s.alpha), ci)
        land = landscape(s.rows, s.final, s.best, s.alpha, len(prompts), (s.surveyed or {}).get("windows"), s.baseline,
                         s.controls, paired_difference(count, s.alpha, ci))
        stability = _stability(cfg, backend.n_layers, count, s, ci, reporter)
        guard_report = s.guard.describe(s.final) if s.guard else None
    # the paper's effect (α > 1: more refusals), larger than any control's move in either direction
    gain = (s.best - s.baseline) * (1 if s.alpha > 1 else -1)
    rivals = [c for c in s.controls if not c.get("blunt")]
    stands_out = bool(rivals) and gain > 0 and all(gain > abs(c["count"] - s.baseline) for c in rivals)
    header = target.header("locate")
    alpha_choice = "given" if cfg.alpha is not None else "survey" if s.surveyed else {"rule": ALPHA_RULE, "trials": s.trials}
    return LocateReport(header, cfg.template, cfg.compat, cfg.scale_o_proj, backend.n_layers, d_o.name, len(prompts),
                        classifier.describe(), s.alpha, alpha_choice, list(s.start), s.start_from, s.surveyed, s.baseline,
                        s.rows, list(s.final), s.best, s.controls, gain, stands_out, land, guard_report,
                        cis["baseline_ci95"],
                        cis["bootstrap"], stability,
                        count.computed + (s.guard.counter.computed if s.guard else 0),
                        round(time.perf_counter() - t0, 2)).to_dict()
