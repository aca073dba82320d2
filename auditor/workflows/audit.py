"""`audit`: the pre-release review in one command — scan (with the base model as contrast when given),
locate from the scan, eval (exactly like a baseline eval when given), attention for one prompt pair, and
`check` against the baseline — every step's JSON in one folder.

Resumable at two levels: a finished step's JSON is kept and not recomputed (the folder's audit.json records
the settings, so a folder is never resumed under other settings without --force), and inside a step the
usual journals apply (hidden states in the cache, locate's journal in the folder, eval's in the cache).
The caller draws the plots and the page (`on_step`): workflows stay below rendering.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import AuditError
from ..io.config import setting
from ..io.files import check_folder_writable, refuse_foreign, write_json
from ..io.models import resolve_model
from ..io.reports import ReportHeader
from . import gate
from .attention import AttentionConfig, run_attention
from .evaluate import EvalConfig, run_eval
from .locate import LocateConfig, run_locate
from .options import ModelOptions
from .reporting import Reporter, Silent
from .scan import ScanConfig, run_scan

STEPS = ("scan", "locate", "eval", "attention", "check")
STATE = "audit.json"
JOURNAL = "locate.journal.jsonl"
BASELINE_COPY = "baseline-eval.json"
# --quick: what bounds a few-minute audit of a 135M model on 2 cores
QUICK = {"bootstrap": 200, "locate_limit": 40, "guard_limit": 24, "eval_limit": 24}


@dataclass
class AuditConfig(ModelOptions):
    out: str | None = setting(None, "Output folder: each step's JSON and PNG, report.html and report.md.", metavar="DIR",
                              required=True)
    baseline: str | None = setting(None, "A baseline eval report: evaluate like it and check against it (exit 1 on a "
                                         "regression, 3 when the prompts cannot tell).", metavar="BASE_EVAL.json")
    base: str | None = setting(None, "The model before alignment/fine-tuning: the scan adds it as --contrast.",
                               metavar="MODEL")
    quick: bool = setting(False, f"Bounded prompt counts (bootstrap {QUICK['bootstrap']}, locate {QUICK['locate_limit']} "
                                 f"D_o prompts, eval {QUICK['eval_limit']} per set): minutes on a 135M model.")
    limits: dict | None = setting(None, "check thresholds (option names of `check`), e.g. {'max_harmful_increase': 0.02}.",
                                  cli=False)
    inconclusive: str = setting("fail", "What a check verdict the prompts cannot decide does: fail (exit 3) or pass (exit 0).",
                                choices="inconclusive")
    force: bool = setting(False, "Start over in a folder that holds an audit of other settings or another model: "
                                 "removes only the files that audit wrote (a folder with anything else is refused).")


def _settings(cfg: AuditConfig) -> dict:
    """What determines the results: a folder is resumed only under the same settings (and model content)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "force", "threads")}


def _model_content(cfg: AuditConfig) -> str | None:
    """The model's SHA-256: a folder is resumed only for the same weights, not the same path (a model
    rebuilt in place by `harden --force` is another model). None for a served model: it has no file."""
    if cfg.backend == "openai":
        return None
    return resolve_model(cfg.model).content_hash()


def _read_state(out: Path) -> dict | None:
    try:
        state = json.loads((out / STATE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) and state.get("command") == "audit" else None


def _written(state: dict) -> list[str]:
    files = state.get("written")
    return [f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")] \
        if isinstance(files, list) else []


def prepare_folder(cfg: AuditConfig) -> Path:
    """Create or reopen the audit folder; refuse one that holds something else, before anything loads.

    --force starts over in a folder that holds an audit of other settings or another model, by removing the
    files that audit recorded writing (audit.json's `written`) and nothing else: a folder that holds any other
    file is refused, --force or not."""
    if not cfg.out:
        raise AuditError("--out DIR is required")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise AuditError("output path is a file, not a folder", out)
    if not out.parent.exists():
        raise AuditError("output's parent folder does not exist", out.parent)
    if out.is_dir() and any(out.iterdir()):
        state = _read_state(out)
        if state is None:
            raise AuditError("output folder exists and is not an audit folder (choose an empty folder: --force "
                             "replaces only an audit's own files)", out)
        settings = json.loads(json.dumps(_settings(cfg)))
        why = ("holds an audit with other settings" if state.get("settings") != settings else
               "holds an audit of another model content (same path, other weights)"
               if state.get("model_sha256") != _model_content(cfg) else None)
        if why and not cfg.force:
            raise AuditError(f"output folder {why} (use --force to start over)", out)
        if why:
            own = [STATE, *_written(state)]
            refuse_foreign(out, own, "the audit")
            for name in own:
                with suppress(FileNotFoundError):
                    (out / name).unlink()
    out.mkdir(exist_ok=True)
    check_folder_writable(out)
    return out


def _save_state(out: Path, cfg: AuditConfig, steps: dict, written: list[str] | None = None) -> None:
    header = asdict(ReportHeader("audit", cfg.model, None, cfg.backend))
    state = _read_state(out) or {}
    files = sorted(set(_written(state)) | set(written or ()))
    write_json(out / STATE, {**header, "settings": _settings(cfg), "model_sha256": _model_content(cfg), "steps": steps,
                             "written": files}, force=True)


def record_written(out: Path, names: list[str]) -> None:
    """Note files a caller wrote into the audit folder (plots, the page): --force may replace them later."""
    state = _read_state(out)
    if state is not None:
        state["written"] = sorted(set(_written(state)) | set(names))
        write_json(out / STATE, state, force=True)


def _model_options(cfg: AuditConfig) -> dict:
    names = ("model", "backend", "template", "threads", "batch", "device", "dtype", "device_map")
    return {k: getattr(cfg, k) for k in names}


def _locate_start(out: Path) -> str | None:
    """Why locate cannot start from this scan, or None when it can."""
    scan = json.loads((out / "scan.json").read_text())
    if scan.get("initial_range") or scan.get("differential_range"):
        return None
    return "the scan found no initial (or differential) safety-layer range to start from"


def run_audit(cfg: AuditConfig, reporter: Reporter | None = None,
              on_step: Callable[[str, dict, Path], None] | None = None) -> dict:
    """Run (or finish) every step; returns audit.json's content. `on_step(name, report, folder)` after each
    step, finished now or earlier (the CLI draws its plot there, recording it first with `record_written`).
    Every file is recorded in audit.json before it is written, so --force can later remove exactly those."""
    reporter = reporter or Silent()
    baseline = gate.load_eval(cfg.baseline) if cfg.baseline else None
    out = prepare_folder(cfg)
    try:
        steps = json.loads((out / STATE).read_text()).get("steps", {})
    except (OSError, json.JSONDecodeError, RecursionError):
        steps = {}
    _save_state(out, cfg, steps, [BASELINE_COPY, JOURNAL] if baseline is not None else [JOURNAL])  # before writing them
    if baseline is not None:
        write_json(out / BASELINE_COPY, baseline, force=True)
    mo, q = _model_options(cfg), cfg.quick
    runners = {
        "scan": lambda: run_scan(ScanConfig(**mo, contrast=cfg.base, **({"bootstrap": QUICK["bootstrap"]} if q else {})), reporter),
        "locate": lambda: run_locate(LocateConfig(**mo, from_scan=str(out / "scan.json"), journal=str(out / JOURNAL),
                                                  **({"limit": QUICK["locate_limit"], "guard_limit": QUICK["guard_limit"]} if q else {})),
                                       reporter),
        "eval": lambda: (gate.evaluate_like(cfg.model, baseline, reporter=reporter) if baseline is not None else
                         run_eval(EvalConfig(**mo, limit=QUICK["eval_limit"] if q else None), reporter)),
        "attention": lambda: run_attention(AttentionConfig(**{**mo, "backend": "auto"}, from_report=_marked(out)), reporter),
        "check": lambda: gate.check_report(json.loads((out / "eval.json").read_text()), baseline, cfg.limits,
                                           cfg.inconclusive),
    }
    for name in STEPS:
        path = out / f"{name}.json"
        if name == "check" and baseline is None:
            steps[name] = "skipped: no --baseline"
            continue
        if steps.get(name) == "done" and path.is_file():
            report = json.loads(path.read_text())
        else:
            why = _locate_start(out) if name == "locate" else None
            if why:
                steps[name] = f"skipped: {why}"
                _save_state(out, cfg, steps)
                continue
            reporter.status(f"audit: {name}")
            report = runners[name]()
            _save_state(out, cfg, steps, [path.name])
            write_json(path, report, force=True)
            steps[name] = "done"
            _save_state(out, cfg, steps)
        if on_step:
            on_step(name, report, out)
    _save_state(out, cfg, steps)
    check = json.loads((out / "check.json").read_text()) if steps.get("check") == "done" else None
    return {"folder": str(out), "steps": steps, "passed": check["passed"] if check else None,
            "verdict": check.get("verdict") if check else None, "exit_code": gate.exit_code(check) if check else 0}


def _marked(out: Path) -> str | None:
    """The report whose safety layers the attention maps mark: locate's when a range moved refusals the
    paper's way, else the scan's initial range (else none)."""
    locate = out / "locate.json"
    if locate.is_file() and json.loads(locate.read_text()).get("gain", 0) > 0:
        return str(locate)
    scan = out / "scan.json"
    return str(scan) if scan.is_file() and json.loads(scan.read_text()).get("initial_range") else None
