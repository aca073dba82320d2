"""`harden`: SPPFT — fine-tuning with the safety layers' linear maps frozen — and its baselines
(docs/METHOD.md §1.3), each a method of `training.methods`.

Nothing is lost: the output folder is written to a temporary sibling and renamed into place; an existing
one is replaced only with `force`; checkpoints next to it let a killed run `resume` to the same weights.
Every option is checked before the model or the data is loaded.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any
from pathlib import Path

import torch

from ..backends.hf_loading import load_causal_lm, torch_folder
from ..core.evidence import study_evidence
from ..errors import AuditError
from ..io.cache import sha256_json
from ..io.gguf_export import export_gguf
from ..io.hf_to_gguf import check_convertible, convert_hf_folder
from ..io.config import check_least, setting
from ..io.files import check_folder_writable, exclusive, refuse_foreign
from ..io.models import layer_count, resolve_model
from ..io.reports import Report, ReportHeader, report_range
from ..io.prompts import load_task_rows
from ..training.attacks import build_attack
from ..training.data import SFTData
from ..training.memory import available_bytes, keep_freed_memory, parameter_counts, training_bytes
from ..training.methods import METHODS, MethodContext
from ..training.paper import PAPER, frozen_by_their_code
from ..training.trainer import (TrainOptions, progress_callback, build_trainer, last_checkpoint, plan_steps,
                                recorded_files, training_arguments, training_versions, write_model_folder)
from ..weights.layers import block_parameters, decoder_layers
from .reporting import Silent

TRAINING_TEMPLATES = ("alpaca", "chat")  # what a training row can be formatted with
GGUF_TYPES = ("f16", "q8_0")


@dataclass
class HardenConfig:
    out: str = setting(None, "The output model folder (HF format + safety_audit.json).", metavar="DIR", required=True)
    model: str | None = setting(None, "The model to fine-tune (default: the bundled SmolLM2).", cli=False)
    method: str = setting("sppft", "What is frozen: " + "; ".join(f"{n}: {m.help}" for n, m in METHODS.items()) + ".",
                          choices="methods")
    layers: tuple[int, int] | None = setting(None, "Safety layers to freeze (inclusive, 0-based), e.g. 6-12.",
                                             metavar="i-j", parse="range")
    from_report: str | None = setting(None, "Take the layers from a locate (safety_layers) or scan report.", metavar="JSON")
    data: str | None = setting(None, "Alpaca-form rows (.json/.jsonl/.csv: instruction, input, output).", metavar="FILE")
    attack: str | None = setting(None, "Build the paper's attack set from bundled data instead of --data.", choices="attacks")
    p: float = setting(0.1, "Malicious share for --attack harmful.")
    n_rows: int | None = setting(None, "Use the first N rows (normal rows for --attack).", flag="--rows", least=1)
    template: str = setting("alpaca", "Prompt template of the training rows.", choices="training-templates")
    lora: bool = setting(False, "Train LoRA adapters (peft) instead, none on frozen layers; merged on save.")
    lora_r: int = setting(8, "LoRA rank.", least=1)
    epochs: float = setting(3.0, "Epochs (the paper: 3).")
    max_steps: int | None = setting(None, "Stop after N optimizer steps (quick runs).", least=1)
    lr: float = setting(1e-4, "Learning rate; the paper: 1e-4 (Llama-3, gemma), 3e-4 (Llama-2), 6e-4 (Phi-3).")
    batch_size: int = setting(4, "Micro-batch size per device.", least=1)
    grad_accum: int | None = setting(None, "Micro-batches per optimizer step: the effective batch is --batch-size x "
                                     "this x processes (default 1; --compat paper: theirs, 32, unless given).", least=1)
    warmup_steps: int | None = setting(None, "Warm-up steps (default: 100, or 10% of the steps for short runs).", least=0)
    cutoff: int = setting(256, "Cut each row at N tokens.", least=2)
    seed: int = setting(0, "Seed of data order, initialisation and attack sets.")
    save_steps: int = setting(50, "Checkpoint every N steps (for --resume).", least=1)
    method_settings: Any = setting(None, "The method's own settings: an instance of its `Settings` class (lisa: "
                                         "LisaSettings); None: its defaults.", cli=False)
    resume: bool = setting(False, "Continue a killed run from its last checkpoint (DIR.checkpoints).")
    gguf: str | None = setting(None, "Also write DIR/model.<type>.gguf: a GGUF input's metadata and tensor names "
                               "with the trained weights; an HF input through llama.cpp's own converter.",
                               choices="gguf-types")
    group_by_length: bool = setting(False, "Batches of similar length (less padding; the reference build uses it).",
                                    cli=False)
    optim: str = setting("adamw_torch_fused", "Optimizer; adamw_torch (foreach) differs in the last bits.", cli=False)
    threads: int | None = setting(None, "CPU threads (default: all cores).", least=1)
    force: bool = setting(False, "Replace an existing output folder.")
    compat: str | None = setting(None, "paper: the authors' recipe (their SPPFT.py): micro-batch 4 x accumulation 32, "
                                 "3 epochs, 100 warm-up steps, lr 3e-5, loss on prompt and answer, alpaca template (--template chat "
                                 "keeps the model's chat template for the prompt), no "
                                 "EOS, 100 rows held out for validation (best checkpoint kept); --layers i-j read as their "
                                 "begin and end (the layers strictly between are frozen). These win over the flags, "
                                 "but for an explicit --template and --grad-accum (recorded in safety_audit.json).",
                                 choices=("paper",))
    val_rows: int = setting(0, "Rows held out (seed 42) for validation; the best checkpoint is loaded at the end.",
                            cli=False)
    layers_as_given: tuple[int, int] | None = setting(None, "--layers before --compat paper read them.", cli=False)


def paper_config(cfg: HardenConfig) -> HardenConfig:
    """--compat paper: the authors' numbers over the flags (training/paper.py), and --layers read as their
    freezing code reads begin and end. Applied once (a config it made comes back unchanged). Two exceptions, each
    kept only when given: the template is where the model's refusals live, not a number of the recipe (the
    default, alpaca, is theirs); and the gradient accumulation, the one knob that gives data smaller than their
    ~4,000 rows their number of optimizer steps (their fixed 100 warm-up steps outlast 18 steps on 797 rows:
    docs/study.md). Without --compat, --grad-accum defaults to 1."""
    if cfg.compat is None:
        return cfg if cfg.grad_accum is not None else replace(cfg, grad_accum=1)
    if cfg.layers_as_given is not None:
        return cfg
    if cfg.compat != "paper":
        raise AuditError(f"unknown compat mode '{cfg.compat}' (choose paper)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return replace(cfg, batch_size=PAPER.batch_size, grad_accum=PAPER.grad_accum(world) if cfg.grad_accum is None else cfg.grad_accum, epochs=PAPER.epochs,
                   warmup_steps=PAPER.warmup_steps, lr=PAPER.lr, cutoff=PAPER.cutoff,
                   val_rows=PAPER.val_rows, optim=PAPER.optim, group_by_length=False, save_steps=PAPER.eval_steps,
                   layers=frozen_by_their_code(*cfg.layers) if cfg.layers else None, layers_as_given=cfg.layers)


def validation_split(rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(training rows, n held-out rows), drawn with seed 42 as the authors' split is."""
    if not n:
        return rows, []
    if len(rows) <= n:
        raise AuditError(f"--compat paper holds out {n} rows for validation, and the data has only {len(rows)}")
    held = set(random.Random(42).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


@dataclass
class HardenReport(Report):
    method: str
    lora: bool
    input_model: str
    template: str
    layers: list[int] | None
    frozen: dict
    frozen_parameters: int
    frozen_fraction: float
    block_parameters: int
    data: dict
    hyperparameters: dict
    resumed_from: str | None
    evidence: list[str]  # the study's verdicts on this method and data (core.evidence)
    train_loss: float
    steps: int
    versions: dict
    seconds: float


def check_numbers(cfg: HardenConfig) -> None:
    """Training numbers that cannot work, refused before any data or model is loaded."""
    if not (cfg.epochs > 0 and math.isfinite(cfg.epochs)) or not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise AuditError(f"--epochs and --lr must be positive numbers (got {cfg.epochs}, {cfg.lr})")
    check_least(cfg)


def settings_of(cfg: HardenConfig):
    """The chosen method's settings (its defaults when none are given); another method's are refused."""
    cls = METHODS[cfg.method].Settings
    if cfg.method_settings is None:
        return cls() if cls else None
    if cls is None:
        raise AuditError(f"--method {cfg.method} has no settings of its own (got {type(cfg.method_settings).__name__})")
    if not isinstance(cfg.method_settings, cls):
        raise AuditError(f"--method {cfg.method} takes {cls.__name__}, not {type(cfg.method_settings).__name__}")
    return cfg.method_settings


def check_config(cfg: HardenConfig) -> Path:
    """Every option checked before anything loads; returns the output folder."""
    if cfg.method not in METHODS:
        raise AuditError(f"unknown method '{cfg.method}' (choose from {', '.join(METHODS)})")
    method = METHODS[cfg.method]
    if (s := settings_of(cfg)) is not None:
        check_least(s)
    if cfg.lora and not method.supports_lora:
        raise AuditError(f"{cfg.method} cannot run as LoRA (use --method sppft --lora)")
    if cfg.template not in TRAINING_TEMPLATES:
        raise AuditError(f"unknown template '{cfg.template}' (choose {' or '.join(TRAINING_TEMPLATES)})")
    if cfg.gguf and cfg.gguf not in GGUF_TYPES:
        raise AuditError(f"unknown GGUF type '{cfg.gguf}' (choose {' or '.join(GGUF_TYPES)})")
    if cfg.layers and cfg.from_report:
        raise AuditError("give --layers or --from-report, not both")
    if method.needs_layers and not (cfg.layers or cfg.from_report):
        raise AuditError(f"--method {cfg.method} needs --layers i-j or --from-report LOCATE.json (the safety layers)")
    if cfg.data and cfg.attack:
        raise AuditError("give --data or --attack, not both")
    check_numbers(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise AuditError("output path is a file, not a folder", out)
    if out.exists() and not cfg.force:
        raise AuditError("output folder exists (use --force to replace it)", out)
    if out.exists():  # --force replaces a model folder this command wrote, nothing else: checked before training
        refuse_foreign(out, recorded_files(out), "safety-audit")
    if not out.parent.exists():
        raise AuditError("output's parent folder does not exist", out.parent)
    check_folder_writable(out.parent)
    return out


def layer_range(cfg: HardenConfig, n_layers: int) -> tuple[int, int] | None:
    if not METHODS[cfg.method].needs_layers:
        return None
    a, b = cfg.layers or report_range(cfg.from_report)
    if not 0 <= a <= b < n_layers:
        raise AuditError(f"layers {a}-{b} are outside the model (layers 0..{n_layers - 1})")
    return a, b


def training_rows(cfg: HardenConfig) -> tuple[list[dict], dict]:
    if cfg.attack:
        return build_attack(cfg.attack, cfg.n_rows, cfg.p, cfg.seed)
    rows = load_task_rows(cfg.data or "alpaca-train")
    return rows[: cfg.n_rows] if cfg.n_rows else rows, {"source": cfg.data or "bundled:alpaca-train"}


def _apply_method(cfg: HardenConfig, ctx: MethodContext):
    """Freeze (or wrap with LoRA) as the method says; returns (model to train, frozen info)."""
    method = METHODS[cfg.method]
    if not cfg.lora:
        return ctx.model, method.freeze(ctx)
    from peft import LoraConfig, get_peft_model

    targets = method.lora_targets(ctx)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    frozen = sorted(set(ctx.layer_range)) if method.freezes_range else []
    return get_peft_model(ctx.model, lcfg), {"lora_modules": len(targets), "frozen_layers": frozen}


def run_harden(cfg: HardenConfig, reporter=None, callbacks=(), rows: tuple[list[dict], dict] | None = None) -> dict:
    """Train and write DIR. `rows`: in-memory training rows and their manifest instead of --data/--attack."""
    reporter = reporter or Silent()
    cfg = paper_config(cfg)
    out = check_config(cfg)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, one lock for the run (rank 0 writes)
    with exclusive(out, "harden") if rank0 else nullcontext():
        return _run(cfg, out, reporter, callbacks, rows)


def check_fits(cfg: HardenConfig, ref, stated: int | None) -> None:
    """Refuse, before the load, a run whose weights, gradients and optimizer state alone exceed the memory free
    (a lower bound: activations come on top), with what would fit instead."""
    folder = torch_folder(ref)
    rng = layer_range(cfg, stated) if stated else None
    frozen_range = range(rng[0], rng[1] + 1) if rng and METHODS[cfg.method].freezes_range else None
    total, frozen = parameter_counts(folder, frozen_range)
    need = training_bytes(total, total - frozen, cfg.lora)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    free = available_bytes(device)
    if free is not None and need > free:
        what = "LoRA" if cfg.lora else f"--method {cfg.method}"
        raise AuditError(f"harden {what} on this model ({total / 1e9:.2f}B parameters) needs at least {need / 1e9:.1f} GB "
                         f"(fp32 weights{'' if cfg.lora else ', gradients and AdamW state'}); {free / 1e9:.1f} GB is free on "
                         f"the {device}: use {'a GPU' if cfg.lora else '--lora (about ' + f'{4 * total / 1e9:.1f} GB) or a GPU'}",
                         ref.path)


def _run(cfg: HardenConfig, out: Path, reporter, callbacks, rows) -> dict:
    rows, manifest = rows if rows is not None else training_rows(cfg)
    t0 = time.perf_counter()
    if not torch.cuda.is_available():
        keep_freed_memory()
    reporter.status("loading the model")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ref = resolve_model(cfg.model)
    if cfg.gguf and not ref.is_gguf:
        check_convertible(ref.path)  # llama.cpp's converter, tried on the input now rather than after training
    stated = layer_count(ref)
    if stated:
        layer_range(cfg, stated)  # a bad range fails before the load, not after it
    check_fits(cfg, ref, stated)
    model, tok = load_causal_lm(ref)
    n_layers = len(decoder_layers(model))
    train_rows, val_rows = validation_split(rows, cfg.val_rows)
    paper = cfg.compat == "paper"
    ctx = MethodContext(model, tok, SFTData(train_rows, tok, cfg.template, cfg.cutoff, ref.path, paper),
                        layer_range(cfg, n_layers), n_layers, cfg.template, cfg.cutoff, settings_of(cfg), reporter.status)
    ctx.validation = SFTData(val_rows, tok, cfg.template, cfg.cutoff, ref.path, paper) if val_rows else None
    if len(ctx.data) == 0:
        raise AuditError("no training rows left (empty data, or every answer cut off by --cutoff)")
    torch.manual_seed(cfg.seed)
    n_total = sum(p.numel() for p in model.parameters())
    train_model, frozen = _apply_method(cfg, ctx)
    n_frozen = frozen.get("frozen_parameters", sum(p.numel() for p in train_model.parameters() if not p.requires_grad))
    result, trainer, steps, resumed = _train(cfg, out, train_model, ctx, reporter, callbacks)
    final = train_model.merge_and_unload() if cfg.lora else train_model
    report = _report(cfg, ref, ctx, rows, manifest, frozen, n_frozen, n_total, steps, resumed, result, trainer, t0)
    if trainer.is_world_process_zero():
        _write(cfg, out, ref, final, tok, report, reporter)
    return report


def _train(cfg, out, train_model, ctx: MethodContext, reporter, callbacks):
    causal_lm, tok, data = ctx.model, ctx.tokenizer, ctx.data
    opts = TrainOptions(cfg.epochs, cfg.max_steps, cfg.lr, cfg.batch_size, cfg.warmup_steps, cfg.seed, cfg.save_steps,
                        cfg.optim, cfg.group_by_length, cfg.grad_accum, PAPER.eval_steps if ctx.validation else None)
    world, total, warmup = plan_steps(len(data), opts)
    ckpt = out.with_name(out.name + ".checkpoints")
    trainer_cls, extra = METHODS[cfg.method].trainer(ctx)
    if ctx.validation:
        extra = {**extra, "eval_dataset": ctx.validation}
    progress = progress_callback(reporter, f"{cfg.method}{' + LoRA' if cfg.lora else ''} training")
    trainer = build_trainer(train_model, causal_lm, tok, data, training_arguments(ckpt, opts, warmup, world), trainer_cls,
                            extra, [progress, *callbacks])
    resumed = last_checkpoint(ckpt, cfg.resume)
    result = trainer.train(resume_from_checkpoint=resumed)
    return result, trainer, {"warmup_steps": warmup, "total_steps": total, "world_size": world,
                             "effective_batch": cfg.batch_size * cfg.grad_accum * world}, resumed


def _report(cfg, ref, ctx, rows, manifest, frozen, n_frozen, n_total, steps, resumed, result, trainer, t0) -> dict:
    budget = sum(p.numel() for p in block_parameters(ctx.model, ctx.layer_range).values()) if ctx.layers else 0
    header = ReportHeader("harden", ref.label, ref.content_hash("torch"), "torch")
    hyper = {k: v for k, v in asdict(cfg).items() if k not in ("out", "force", "resume", "threads")} | steps
    hyper["method_settings"] = asdict(ctx.settings) if ctx.settings is not None else None  # effective, defaults too
    data = {"rows": len(rows), "examples": len(ctx.data), "sha256": sha256_json(rows), **manifest,
            "validation_rows": len(ctx.validation) if ctx.validation else 0}
    return HardenReport(header, cfg.method, cfg.lora, ref.label, cfg.template, list(ctx.layers) if ctx.layers else None,
                        frozen, n_frozen, n_frozen / n_total, budget, data, hyper, resumed,
                        study_evidence(cfg.method, cfg.attack, cfg.compat), result.training_loss,
                        trainer.state.global_step, training_versions(), round(time.perf_counter() - t0, 1)).to_dict()


def _with_sentencepiece(folder: Path, source: Path) -> Path:
    """The converter reads a SentencePiece model for most families; a tokenizer saved by transformers may not
    carry one, so the input's is copied beside the trained weights."""
    spm = source / "tokenizer.model"
    if spm.is_file() and not (folder / spm.name).exists():
        shutil.copy(spm, folder / spm.name)
    return folder


def _write(cfg, out, ref, model, tok, report, reporter) -> None:
    extra_files = None
    if cfg.gguf:
        reporter.status(f"writing the GGUF ({cfg.gguf})")
        name = f"model.{cfg.gguf}.gguf"
        if ref.is_gguf:  # the input's own metadata and tensor names, with the trained weights
            extra_files = lambda folder: export_gguf(ref.path, model.state_dict(), folder / name, cfg.gguf)
        else:
            extra_files = lambda folder: convert_hf_folder(_with_sentencepiece(folder, ref.path), folder / name, cfg.gguf)
        report["gguf"] = f"model.{cfg.gguf}.gguf"
    write_model_folder(out, model, tok, report, cfg.force, extra_files)
    shutil.rmtree(out.with_name(out.name + ".checkpoints"), ignore_errors=True)
