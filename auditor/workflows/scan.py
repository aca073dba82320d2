"""`scan`: per-layer final-token states for normal vs malicious prompts, their pair statistics, the angle
gap with bootstrap CIs and the initial safety-layer range (docs/METHOD.md §1.1).

States are cached per (model content, backend, template, prompts) in chunks, so an interrupted scan
resumes where it stopped and a re-run with other statistics options needs no forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..backends import HIDDEN_STATES, check_capabilities, library_version
from ..backends.devices import resolve_device
from ..core.bootstrap import percentile_ci, scan_resamples
from ..core.gap import (GAP_DEFINITIONS, GapStats, RangeRule, differential_range, gap_stats, initial_range, pair_sample,
                        paper_pair_sample)
from ..errors import AuditError
from ..io.cache import StateStore, sha256_json
from ..io.config import check_least, setting
from ..io.models import resolve_model
from ..io.prompts import PromptSet, check_template, load_prompts, require_pool
from ..io.reports import Report
from .options import ModelOptions, Target
from .reporting import Reporter, Silent

CHUNK = 32


@dataclass
class ScanConfig(ModelOptions):
    batch: int | None = setting(None, "Prompts per forward pass (torch; default: up to 4,096 tokens).", least=1)
    normal: str = setting("normal", "Normal prompts: a bundled set or a .txt/.csv/.json/.jsonl file.")
    malicious: str = setting("malicious", "Malicious prompts: a bundled set or a file.")
    pairs: int | None = setting(None, "Sample N random pairs per type like the paper (default: all pairs, exact).", least=1)
    bootstrap: int = setting(1000, "Bootstrap replicates (over prompts) for the 95% CIs; 0 = none.", least=0)
    seed: int = setting(0, "Seed of the bootstrap and the pair sampling.")
    contrast: str | None = setting(None, "Scan a second model (e.g. the base model) and report the differential gap.",
                                   metavar="MODEL2")
    contrast_backend: str = setting("auto", "Backend of the contrast model.", choices="backends")
    use_cache: bool = setting(True, "Do not reuse or store cached hidden states (they are keyed by the model's content).",
                              flag="--no-cache")
    rule: RangeRule = setting(help="The initial-range rule's parameters.", factory=RangeRule, cli=False)
    compat: str | None = setting(None, choices=("paper",), help="paper: the authors' computation (their 500 pair draws per type, seeds 10/100/"
                                       "1000; last layer after the final norm; gap = angle of the mean cosine; alpaca).")


@dataclass
class LayerRow:
    layer: int
    cos_nn: float
    cos_mm: float
    cos_nm: float
    angle_nn_deg: float
    angle_mm_deg: float
    angle_nm_deg: float
    angle_gap_deg: float  # in the report's gap_definition
    gap_ci95: list[float]
    gap_mean_of_angles_deg: float
    gap_angle_of_mean_cosine_deg: float


@dataclass
class ModelScan:
    model: str
    backend: str
    n_layers: int
    hidden_size: int
    layers: list[LayerRow]
    initial_range: list[int] | None
    range_details: dict
    seconds: float


def _state_key(target: Target, template: str, prompts: PromptSet) -> str:
    """Everything that determines the states: the content of what the backend reads, its version, the
    template, the prompts and a non-fp32 precision. Not the path: a scaled copy or a retrained folder never
    hits its source's."""
    versions = library_version(target.backend_name)
    return sha256_json([target.sha256, target.backend_name, template, versions, list(prompts.prompts),
                        *target.precision])[:32]


class StateProbe:
    """[K, n, d] final-token states of a prompt set, from the cache or the target's backend (loaded only when a
    chunk is not cached)."""

    def __init__(self, target: Target, use_cache: bool, reporter: Reporter):
        self.target, self.use_cache, self.reporter = target, use_cache, reporter

    def states(self, prompts: PromptSet, template: str, role: str, last_normed: bool = False) -> torch.Tensor:
        key = _state_key(self.target, template, prompts) + ("-normed" if last_normed else "")
        store = StateStore(key, self.use_cache)
        self.reporter.start(f"{role} prompts · {self.target.backend_name}", len(prompts))
        parts = []
        for c in range(0, len(prompts), CHUNK):
            chunk = list(prompts.prompts[c : c + CHUNK])
            part = store.get(c)
            if part is None:
                backend = self.target.backend(self.reporter)
                part = backend.final_token_states(chunk, template, self.reporter.advance, last_normed)
                store.put(c, part)
            else:
                self.reporter.advance(len(chunk))
            parts.append(part)
        return torch.cat(parts, dim=1)


def _rows(gs: GapStats) -> list[LayerRow]:
    lo, hi = gs.ci95()
    return [
        LayerRow(k, float(gs.cos_nn[k]), float(gs.cos_mm[k]), float(gs.cos_nm[k]), float(gs.angle_nn[k]),
                 float(gs.angle_mm[k]), float(gs.angle_nm[k]), float(gs.gap[k]), [float(lo[k]), float(hi[k])],
                 float(gs.gap_mean_of_angles[k]), float(gs.gap_angle_of_mean_cosine[k]))
        for k in range(len(gs.gap))
    ]


def _scan_one(target: Target, cfg: ScanConfig, normal: PromptSet, malicious: PromptSet,
              weights, reporter: Reporter, keep_loaded: bool = False) -> tuple[ModelScan, GapStats]:
    t0 = time.perf_counter()
    probe = StateProbe(target, cfg.use_cache, reporter)
    paper = cfg.compat == "paper"
    try:
        sn = probe.states(normal, cfg.template, "normal", last_normed=paper)
        sm = probe.states(malicious, cfg.template, "malicious", last_normed=paper)
    finally:
        if not keep_loaded:  # freed before the statistics (and before a contrast model loads)
            target.close()
    if target.backend_name == "torch" and cfg.device != "cpu":  # the pair statistics run where the model ran
        device = resolve_device(cfg.device)
        sn, sm = sn.to(device), sm.to(device)
    reporter.status("pair statistics")
    if paper:
        sample = paper_pair_sample(len(normal), len(malicious), cfg.pairs or 500)
    else:
        sample = None if cfg.pairs is None else pair_sample(len(normal), len(malicious), cfg.pairs, cfg.seed)
    definition = "angle-of-mean-cosine" if paper else "mean-of-angles"
    gs = gap_stats(sn, sm, sample, weights, definition=definition)
    lo, _ = gs.ci95()
    rng, details = initial_range(gs.gap, lo, cfg.rule)
    details["stats_path"] = gs.path
    scan = ModelScan(target.label, target.backend_name, sn.shape[0], sn.shape[2], _rows(gs), rng, details,
                     round(time.perf_counter() - t0, 3))
    return scan, gs


@dataclass
class ScanReport(Report):
    template: str
    n_layers: int
    hidden_size: int
    n_normal: int
    n_malicious: int
    normal_set: str
    malicious_set: str
    hidden_state: str
    compat: str | None
    gap_definition: dict
    pairs: str | int
    bootstrap: dict
    layers: list[LayerRow]
    initial_range: list[int] | None
    range_rule: dict
    seconds: float
    contrast: ModelScan | None = None
    differential: list[dict] | None = None
    differential_range: list[int] | None = None


HIDDEN_STATE = "raw residual output of each decoder layer (before the final norm) at the final prompt token"
HIDDEN_STATE_PAPER = ("residual output of each decoder layer at the final prompt token; the last layer's after the "
                      "final norm (HF's last hidden_states entry, as the paper read it)")


def _differential(gs: GapStats, gs2: GapStats, weights) -> list[dict]:
    diff = gs.gap - gs2.gap
    lo, hi = percentile_ci(gs.replicates - gs2.replicates, diff) if weights is not None else (diff, diff)
    return [{"layer": k, "diff_gap_deg": float(diff[k]), "ci95": [float(lo[k]), float(hi[k])]} for k in range(len(diff))]


def _pairs_label(cfg: ScanConfig) -> str | int:
    if cfg.compat == "paper":
        return f"the authors' draws: {cfg.pairs or 500} per type, Python random seeds 10/100/1000 (+1 per draw)"
    return "all" if cfg.pairs is None else cfg.pairs


def run_scan(cfg: ScanConfig, reporter: Reporter | None = None, target: Target | None = None) -> dict:
    """Run a scan (and its contrast) and return the JSON-ready report. `target`: a model another command has
    already resolved (and maybe loaded), scanned with its backend and left loaded for that command (locate's
    start range: one model in memory, loaded once)."""
    reporter = reporter or Silent()
    if cfg.compat not in (None, "paper"):
        raise AuditError(f"unknown compat mode '{cfg.compat}' (choose paper)")
    if cfg.compat == "paper":
        cfg.template = "alpaca"  # the authors' Prompter("alpaca"), the tokenizer's default special tokens
    check_template(cfg.template)
    check_least(cfg)
    keep_loaded = target is not None
    if target is None:
        target = Target.resolve(cfg, (HIDDEN_STATES,))
    else:
        check_capabilities(target.backend_name, (HIDDEN_STATES,))
    contrast = (Target.of(resolve_model(cfg.contrast), cfg, (HIDDEN_STATES,), cfg.contrast_backend)
                if cfg.contrast else None)
    normal = require_pool(load_prompts(cfg.normal), "normal")
    malicious = require_pool(load_prompts(cfg.malicious), "malicious")
    weights = scan_resamples(len(normal), len(malicious), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None

    main, gs = _scan_one(target, cfg, normal, malicious, weights, reporter, keep_loaded)
    report = ScanReport(
        target.header("scan"), cfg.template, main.n_layers,
        main.hidden_size, len(normal), len(malicious), normal.name, malicious.name,
        HIDDEN_STATE_PAPER if cfg.compat else HIDDEN_STATE, cfg.compat, {"name": gs.definition, "definition":
        GAP_DEFINITIONS[gs.definition]}, _pairs_label(cfg), {"replicates": cfg.bootstrap, "seed": cfg.seed, "unit": "prompts"},
        main.layers, main.initial_range, {**cfg.rule.to_dict(), **main.range_details}, main.seconds)
    if contrast:
        report.contrast, gs2 = _scan_one(contrast, cfg, normal, malicious, weights, reporter)
        if report.contrast.n_layers == main.n_layers:
            report.differential = _differential(gs, gs2, weights)
            report.differential_range = differential_range(report.differential)
    return report.to_dict()
