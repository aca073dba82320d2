"""`scan`: per-layer final-token states for normal vs malicious prompts, their pair statistics, the angle
gap with bootstrap CIs and the initial safety-layer range (DESIGN §1.1).

States are cached per (model content, backend, template, prompts) in chunks, so an interrupted scan
resumes where it stopped and a re-run with other statistics options needs no forward pass.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from . import __version__
from .gap import (GapStats, RangeRule, bootstrap_weights, differential_range, gap_stats, initial_range, pair_masks,
                  percentile_ci)
from .io import atomic_write
from .models import ModelRef, cache_dir, choose_backend, file_fingerprint, open_backend, resolve_model
from .prompts import PromptSet, check_template, load_prompts, require_pool
from .similarity import pair_statistics

SCHEMA_VERSION = 1
CHUNK = 32


class Reporter(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def status(self, message: str) -> None: ...


class _Silent:
    def start(self, description, total): pass
    def advance(self, n): pass
    def status(self, message): pass


@dataclass
class ScanConfig:
    model: str | None = None  # None: the bundled SmolLM2
    backend: str = "auto"
    template: str = "alpaca"
    normal: str = "normal"  # bundled set name or file
    malicious: str = "malicious"
    pairs: int | None = None  # sample this many pairs per type (paper: 500) instead of all pairs
    bootstrap: int = 1000
    seed: int = 0
    threads: int | None = None
    contrast: str | None = None
    contrast_backend: str = "auto"
    use_cache: bool = True
    rule: RangeRule = field(default_factory=RangeRule)


@dataclass
class LayerRow:
    layer: int
    cos_nn: float
    cos_mm: float
    cos_nm: float
    angle_nn_deg: float
    angle_mm_deg: float
    angle_nm_deg: float
    angle_gap_deg: float
    gap_ci95: list[float]


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


def _state_key(model: ModelRef, backend: str, template: str, prompts: PromptSet) -> str:
    from importlib.metadata import version  # not an import of the backend: a fully cached scan loads none

    h = hashlib.sha256()
    fp = file_fingerprint(model.path) if model.is_gguf else _folder_fingerprint(model.path)
    versions = version("llama_cpp_python") if backend == "llama" else version("transformers")
    h.update(json.dumps([fp, backend, template, versions, list(prompts.prompts)]).encode())
    return h.hexdigest()[:32]


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        h.update(f.name.encode() + file_fingerprint(f).encode())
    return h.hexdigest()[:24]


class StateProbe:
    """Opens the backend lazily (only when a chunk is not cached) and returns [K, n, d] states."""

    def __init__(self, model: ModelRef, backend: str, threads: int | None, use_cache: bool, reporter: Reporter):
        self.model, self.backend_name = model, choose_backend(model, backend)
        self.threads, self.use_cache, self.reporter = threads, use_cache, reporter
        self._backend = None
        self.n_layers = self.hidden_size = None

    @property
    def backend(self):
        if self._backend is None:
            self.reporter.status(f"loading {self.model.label} ({self.backend_name} backend)")
            self._backend = open_backend(self.model, self.backend_name, threads=self.threads)
        return self._backend

    def states(self, prompts: PromptSet, template: str, role: str) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        folder = cache_dir() / "states" / _state_key(self.model, self.backend_name, template, prompts)
        self.reporter.start(f"{role} prompts · {self.backend_name}", len(prompts))
        parts = []
        for c in range(0, len(prompts), CHUNK):
            chunk = list(prompts.prompts[c : c + CHUNK])
            f = folder / f"{c:06d}.safetensors"
            if self.use_cache and f.is_file():
                part = load_file(str(f))["states"]
                self.reporter.advance(len(chunk))
            else:
                part = self.backend.final_token_states(chunk, template, self.reporter.advance)
                if self.use_cache:
                    folder.mkdir(parents=True, exist_ok=True)
                    atomic_write(f, lambda t: save_file({"states": part.contiguous()}, str(t)), force=True)
            parts.append(part)
        return torch.cat(parts, dim=1)

    def close(self):
        if self._backend is not None:
            self._backend.close()


def _rows(gs: GapStats) -> list[LayerRow]:
    lo, hi = gs.ci95()
    return [
        LayerRow(k, float(gs.cos_nn[k]), float(gs.cos_mm[k]), float(gs.cos_nm[k]), float(gs.angle_nn[k]),
                 float(gs.angle_mm[k]), float(gs.angle_nm[k]), float(gs.gap[k]), [float(lo[k]), float(hi[k])])
        for k in range(len(gs.gap))
    ]


def _scan_one(model: ModelRef, backend: str, cfg: ScanConfig, normal: PromptSet, malicious: PromptSet,
              weights, reporter: Reporter) -> tuple[ModelScan, GapStats]:
    t0 = time.perf_counter()
    probe = StateProbe(model, backend, cfg.threads, cfg.use_cache, reporter)
    try:
        sn = probe.states(normal, cfg.template, "normal")
        sm = probe.states(malicious, cfg.template, "malicious")
    finally:
        probe.close()
    reporter.status("pair statistics")
    need_pairs = cfg.bootstrap > 0 or cfg.pairs is not None
    ps = pair_statistics(sn, sm, return_pairs=need_pairs)
    masks = pair_masks(len(normal), len(malicious), cfg.pairs, cfg.seed)
    gs = gap_stats(ps, masks, weights, exact=cfg.pairs is None)
    lo, _ = gs.ci95()
    rng, details = initial_range(gs.gap, lo, cfg.rule)
    details["stats_path"] = ps.path
    scan = ModelScan(model.label, probe.backend_name, sn.shape[0], sn.shape[2], _rows(gs), rng, details,
                     round(time.perf_counter() - t0, 3))
    return scan, gs


def run_scan(cfg: ScanConfig, reporter: Reporter | None = None) -> dict:
    """Run a scan (and its contrast) and return the JSON-ready report (schema_version 1)."""
    reporter = reporter or _Silent()
    check_template(cfg.template)
    model = resolve_model(cfg.model)
    contrast = resolve_model(cfg.contrast) if cfg.contrast else None
    choose_backend(model, cfg.backend)
    if contrast:
        choose_backend(contrast, cfg.contrast_backend)
    normal = require_pool(load_prompts(cfg.normal), "normal")
    malicious = require_pool(load_prompts(cfg.malicious), "malicious")
    if cfg.bootstrap < 0 or (cfg.pairs is not None and cfg.pairs < 1):
        from .errors import AuditError

        raise AuditError("--bootstrap must be >= 0 and --pairs >= 1")
    weights = bootstrap_weights(len(normal), len(malicious), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None

    main, gs = _scan_one(model, cfg.backend, cfg, normal, malicious, weights, reporter)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": f"safety-audit {__version__}",
        "command": "scan",
        "model": main.model,
        "backend": main.backend,
        "template": cfg.template,
        "n_layers": main.n_layers,
        "hidden_size": main.hidden_size,
        "n_normal": len(normal),
        "n_malicious": len(malicious),
        "normal_set": normal.name,
        "malicious_set": malicious.name,
        "hidden_state": "raw residual output of each decoder layer (before the final norm) at the final prompt token",
        "pairs": "all" if cfg.pairs is None else cfg.pairs,
        "bootstrap": {"replicates": cfg.bootstrap, "seed": cfg.seed, "unit": "prompts"},
        "layers": [asdict(r) for r in main.layers],
        "initial_range": main.initial_range,
        "range_rule": {**cfg.rule.to_dict(), **main.range_details},
        "seconds": main.seconds,
        "contrast": None,
        "differential": None,
        "differential_range": None,
    }
    if contrast:
        other, gs2 = _scan_one(contrast, cfg.contrast_backend, cfg, normal, malicious, weights, reporter)
        report["contrast"] = asdict(other)
        if other.n_layers == main.n_layers:
            diff = gs.gap - gs2.gap
            lo, hi = percentile_ci(gs.replicates - gs2.replicates, diff) if weights is not None else (diff, diff)
            report["differential"] = [
                {"layer": k, "diff_gap_deg": float(diff[k]), "ci95": [float(lo[k]), float(hi[k])]}
                for k in range(main.n_layers)
            ]
            report["differential_range"] = differential_range(report["differential"])
    return report
