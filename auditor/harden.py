"""`harden`: SPPFT — fine-tuning with the safety layers' attention and MLP frozen — and its baselines,
on transformers Trainer (accelerate underneath, so `accelerate launch` / `torchrun` work unchanged).

Nothing is lost: the output folder is written to a temporary sibling and renamed into place; an existing
one is replaced only with `force`; checkpoints next to it let a killed run `resume` to the same weights.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__
from .attacks import build_attack, advbench_train
from .errors import AuditError
from .models import resolve_model
from .prompts import ALPACA, ALPACA_INPUT, load_task_rows, task_query

METHODS = ("sppft", "full", "nfft", "lisa", "freeze-block")
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REFUSALS = ("I cannot help with that request.", "I'm sorry, but I can't assist with that.",
            "I can't help with this. It could cause serious harm.", "Sorry, I won't provide that.")
# the paper's learning rates (SPPFT, 3 epochs, micro-batch 4, AdamW)
PAPER_LR = {"llama-3": 1e-4, "gemma": 1e-4, "llama-2": 3e-4, "phi-3": 6e-4}


@dataclass
class HardenConfig:
    out: str
    model: str | None = None
    method: str = "sppft"
    layers: tuple[int, int] | None = None
    from_report: str | None = None
    data: str | None = None
    attack: str | None = None
    p: float = 0.1
    n_rows: int | None = None
    template: str = "alpaca"
    lora: bool = False
    lora_r: int = 8
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float = 1e-4
    batch_size: int = 4
    warmup_steps: int | None = None  # None: 100, or 10% of the steps when the run is short
    cutoff: int = 256
    seed: int = 0
    save_steps: int = 50
    lisa_period: int = 4  # lisa: steps per phase (alignment, task, alignment, ...)
    lisa_rho: float = 0.1  # lisa: proximal weight
    gguf: str | None = None  # also write DIR/model.<f16|q8_0>.gguf (GGUF input only)
    group_by_length: bool = False  # batches of similar length (less padding; the reference build uses it)
    optim: str = "adamw_torch_fused"  # one pass per tensor; "adamw_torch" (foreach) differs in the last bits
    force: bool = False
    resume: bool = False
    threads: int | None = None


def check_numbers(cfg: HardenConfig) -> None:
    """Training numbers that cannot work, refused before any data or model is loaded."""
    if not (cfg.epochs > 0 and math.isfinite(cfg.epochs)) or not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise AuditError(f"--epochs and --lr must be positive numbers (got {cfg.epochs}, {cfg.lr})")
    if cfg.max_steps is not None and cfg.max_steps < 1 or cfg.batch_size < 1 or cfg.cutoff < 2:
        raise AuditError("--max-steps and --batch-size must be >= 1, --cutoff >= 2")


def _layers(cfg: HardenConfig, n_layers: int) -> tuple[int, int] | None:
    if cfg.method in ("full", "lisa"):  # nothing frozen
        return None
    rng = cfg.layers
    if rng is None and cfg.from_report:
        p = Path(cfg.from_report)
        try:
            rep = json.loads(p.read_text())
            rng = rep.get("safety_layers") or rep.get("initial_range")
        except (OSError, json.JSONDecodeError, AttributeError):
            raise AuditError("not a readable locate/scan report", p) from None
        if not rng:
            raise AuditError("the report has no safety_layers or initial_range", p)
    if rng is None:
        raise AuditError(f"--method {cfg.method} needs --layers i-j or --from-report")
    a, b = int(rng[0]), int(rng[1])
    if not 0 <= a <= b < n_layers:
        raise AuditError(f"layers {a}-{b} are outside the model (layers 0..{n_layers - 1})")
    return a, b


def _rows(cfg: HardenConfig) -> tuple[list[dict], dict]:
    if cfg.data and cfg.attack:
        raise AuditError("give --data or --attack, not both")
    if cfg.attack:
        return build_attack(cfg.attack, cfg.n_rows, cfg.p, cfg.seed)
    rows = load_task_rows(cfg.data or "alpaca-train")
    return rows[: cfg.n_rows] if cfg.n_rows else rows, {"source": cfg.data or "bundled:alpaca-train"}


class SFTData(torch.utils.data.Dataset):
    """Alpaca-template prompt + answer + EOS, cut at `cutoff` tokens; loss only on the answer."""

    def __init__(self, rows, tokenizer, template: str, cutoff: int):
        self.items = []
        eos = tokenizer.eos_token or ""
        for r in rows:
            if template == "chat":
                prompt = tokenizer.apply_chat_template([{"role": "user", "content": task_query(r)}], tokenize=False,
                                                       add_generation_prompt=True)
                p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            else:
                prompt = ALPACA_INPUT.format(q=r["instruction"], i=r["input"]) if r.get("input") else ALPACA.format(q=r["instruction"])
                p_ids = tokenizer(prompt)["input_ids"]
            a_ids = tokenizer(r["output"] + eos, add_special_tokens=False)["input_ids"]
            ids = (p_ids + a_ids)[:cutoff]
            labels = ([-100] * len(p_ids) + a_ids)[:cutoff]
            if any(x != -100 for x in labels):
                self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose logits the loss needs: from the one predicting the batch's earliest answer
    token to the second-last. Prompt positions before it need no logits (loss on the answer only)."""
    _, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    start = int(cols.min()) if len(cols) else labels.shape[1] - 2
    return torch.arange(start, labels.shape[1] - 1)


def answer_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Causal-LM cross-entropy on logits computed for `answer_positions` only (the same value as the full
    loss). Saves the lm_head and softmax for prompt tokens: SmolLM2's vocabulary head is 28M of 135M weights."""
    idx = answer_positions(labels)
    logits = outputs.logits.float()
    target = labels[:, idx + 1].to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum()
    return loss / n


class Collator:
    def __init__(self, pad_id: int, answer_logits_only: bool = False):
        self.pad_id, self.answer_logits_only = pad_id, answer_logits_only

    def __call__(self, batch):
        w = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), w), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), w), -100, dtype=torch.long)
        mask = torch.zeros(len(batch), w, dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if self.answer_logits_only:  # the model computes logits there only; answer_loss takes the labels
            batch["logits_to_keep"] = answer_positions(labels)
        return batch


def alignment_rows(n: int | None = None) -> list[dict]:
    """Refusals for the AdvBench train split: the safety data of nfft importance and lisa's alignment steps."""
    bad = advbench_train()[: n or None]
    return [{"instruction": g, "input": "", "output": REFUSALS[i % len(REFUSALS)]} for i, (_, g, _) in enumerate(bad)]


def keep_freed_memory() -> bool:
    """Have glibc serve big tensors from its heap and keep what is freed, instead of an mmap/munmap per
    tensor: otherwise every CPU training step page-faults its gradients and activations in afresh (SmolLM2,
    4 x 128 tokens: ~250k faults, 0.5-0.8 s of a 3.3 s step in the kernel). Costs a little peak memory
    (freed blocks stay resident). Linux/glibc only; returns whether it applied."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def load_model(path_spec, threads=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .backends.hf import _quiet_transformers, torch_folder

    _quiet_transformers()
    os.environ["TQDM_DISABLE"] = "1"  # "Writing model shards" bars; the CLI shows rich progress
    if threads:
        torch.set_num_threads(threads)
    ref = resolve_model(path_spec)
    folder = torch_folder(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (ValueError, KeyError, OSError) as e:
        raise AuditError(f"transformers cannot load this model ({str(e).splitlines()[0][:160]})", ref.path) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return ref, model, tok


def _check_out(cfg: HardenConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise AuditError("output path is a file, not a folder", out)
    if out.exists() and not cfg.force:
        raise AuditError("output folder exists (use --force to replace it)", out)
    if not out.parent.exists():
        raise AuditError("output's parent folder does not exist", out.parent)
    return out


def sha256_json(obj) -> str:
    """Content hash of JSON-able data (training rows, recipe keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_harden(cfg: HardenConfig, reporter=None, callbacks=(), rows: tuple[list[dict], dict] | None = None) -> dict:
    """Train and write DIR. `rows`: in-memory training rows and their manifest instead of --data/--attack."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from .backends.hf import decoder_layers
    from .freezing import block_parameters, freeze_block, freeze_safety_neurons
    from .scan import _Silent

    reporter = reporter or _Silent()
    if cfg.method not in METHODS:
        raise AuditError(f"unknown method '{cfg.method}' (choose from {', '.join(METHODS)})")
    if cfg.lora and cfg.method == "nfft":
        raise AuditError("nfft freezes single neurons; it cannot run as LoRA (use --method sppft --lora)")
    if cfg.template not in ("alpaca", "chat"):
        raise AuditError(f"unknown template '{cfg.template}' (choose alpaca or chat)")
    check_numbers(cfg)
    out = _check_out(cfg)
    if cfg.gguf and cfg.gguf not in ("f16", "q8_0"):
        raise AuditError(f"unknown GGUF type '{cfg.gguf}' (choose f16 or q8_0)")
    rows, manifest = rows if rows is not None else _rows(cfg)
    t0 = time.perf_counter()
    if not torch.cuda.is_available():
        keep_freed_memory()
    reporter.status("loading the model")
    ref, model, tok = load_model(cfg.model, cfg.threads)
    if cfg.gguf and not ref.is_gguf:
        raise AuditError("--gguf needs a GGUF input model (its metadata and tensor names are reused)", ref.path)
    K = len(decoder_layers(model))
    rng = _layers(cfg, K)
    data = SFTData(rows, tok, cfg.template, cfg.cutoff)
    if len(data) == 0:
        raise AuditError("no training rows left (empty data, or every answer cut off by --cutoff)")
    torch.manual_seed(cfg.seed)
    frozen: dict = {}
    n_total = sum(p.numel() for p in model.parameters())
    block = sorted(block_parameters(model, range(rng[0], rng[1] + 1))) if rng else []
    budget = sum(dict(model.named_parameters())[n].numel() for n in block)
    if cfg.method in ("sppft", "freeze-block") and not cfg.lora:
        frozen = {"parameters": freeze_block(model, range(rng[0], rng[1] + 1))}
    elif cfg.method == "nfft":
        collate = Collator(tok.pad_token_id)
        safe = SFTData(alignment_rows(16), tok, cfg.template, cfg.cutoff)
        batches = lambda ds: [collate([ds[i] for i in range(j, min(j + 4, len(ds)))]) for j in range(0, min(len(ds), 16), 4)]
        reporter.status("nfft: ranking safety-critical neurons (SNIP, safety minus utility)")
        frozen = freeze_safety_neurons(model, budget, batches(safe), batches(data))
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        keep = [k for k in range(K) if not (rng and cfg.method in ("sppft", "freeze-block") and rng[0] <= k <= rng[1])]
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0, target_modules=list(LINEAR),
                          layers_to_transform=keep, task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
        frozen = {"lora_layers": keep, "frozen_layers": [k for k in range(K) if k not in keep]}
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) if cfg.method != "nfft" else frozen["frozen_parameters"]

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = math.ceil(len(data) / (cfg.batch_size * world))
    total = cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else (100 if total >= 1000 else round(0.1 * total))
    ckpt = out.with_name(out.name + ".checkpoints")
    args = TrainingArguments(
        output_dir=str(ckpt), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, learning_rate=cfg.lr, warmup_steps=warmup, lr_scheduler_type="linear",
        weight_decay=0.0, optim=cfg.optim, logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed, report_to=[], disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", dataloader_num_workers=0, remove_unused_columns=False,
        ddp_backend="gloo" if not torch.cuda.is_available() and world > 1 else None)

    class Progress(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            reporter.start(f"{cfg.method}{' + LoRA' if cfg.lora else ''} training", state.max_steps)
            reporter.advance(state.global_step)

        def on_step_end(self, a, state, control, **kw):
            reporter.advance(1)

    trainer_cls = Trainer
    extra = {}
    if cfg.method == "lisa":
        from .lisa import LisaTrainer

        trainer_cls = LisaTrainer
        extra = {"align_dataset": SFTData(alignment_rows(), tok, cfg.template, cfg.cutoff), "period": cfg.lisa_period,
                 "rho": cfg.lisa_rho}
    causal_lm = model.get_base_model() if cfg.lora else model
    answer_only = "logits_to_keep" in inspect.signature(causal_lm.forward).parameters
    if answer_only:
        extra["compute_loss_func"] = answer_loss
    trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=Collator(tok.pad_token_id, answer_only),
                          callbacks=[Progress(), *callbacks], **extra)
    trainer.remove_callback(PrinterCallback)  # the rich progress bar replaces its printed dicts
    resume = get_last_checkpoint(str(ckpt)) if cfg.resume and ckpt.is_dir() else None
    result = trainer.train(resume_from_checkpoint=resume)
    if cfg.lora:
        model = model.merge_and_unload()
    report = {
        "schema_version": 1, "tool": f"safety-audit {__version__}", "command": "harden", "method": cfg.method,
        "lora": cfg.lora, "input_model": ref.label, "template": cfg.template,
        "layers": list(rng) if rng else None, "frozen": frozen, "frozen_parameters": n_frozen,
        "frozen_fraction": n_frozen / n_total, "block_parameters": budget,
        "data": {"rows": len(rows), "examples": len(data), "sha256": sha256_json(rows), **manifest},
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("out", "force", "resume", "threads")}
                           | {"warmup_steps": warmup, "total_steps": total, "world_size": world},
        "resumed_from": resume, "train_loss": result.training_loss, "steps": trainer.state.global_step,
        "versions": _versions(), "seconds": round(time.perf_counter() - t0, 1),
    }
    if trainer.is_world_process_zero():
        extra_files = None
        if cfg.gguf:
            from .gguf_export import export_gguf

            reporter.status(f"writing the GGUF ({cfg.gguf})")
            extra_files = lambda folder: export_gguf(ref.path, model.state_dict(), folder / f"model.{cfg.gguf}.gguf", cfg.gguf)
            report["gguf"] = f"model.{cfg.gguf}.gguf"
        _write_model_folder(out, model, tok, report, cfg.force, extra_files)
        shutil.rmtree(ckpt, ignore_errors=True)
    return report


def _versions() -> dict:
    import transformers

    v = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        v["peft"] = peft.__version__
    except ImportError:
        pass
    return v


def _write_model_folder(out: Path, model, tok, report: dict, force: bool, extra_files=None) -> None:
    """Write to a temporary sibling, then rename: a crash never leaves a half-written model folder."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if extra_files:
            extra_files(tmp)
        (tmp / "safety_audit.json").write_text(json.dumps(report, indent=2) + "\n")
        if out.exists():
            if not force:
                raise AuditError("output folder exists (use --force to replace it)", out)
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
