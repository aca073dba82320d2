"""The Trainer set-up shared by every harden method and the reference build (transformers Trainer, with
accelerate underneath, so `accelerate launch` / `torchrun` work unchanged), and the model folder it writes.

transformers' trainer stack is imported inside the functions that use it: it costs ~3 s, which every
`safety-audit --help` would otherwise pay."""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.files import replace_dir, temp_dir
from .data import Collator, answer_loss


@dataclass
class TrainOptions:
    epochs: float
    max_steps: int | None
    lr: float
    batch_size: int
    warmup_steps: int | None  # None: 100, or 10% of the steps when the run is short
    seed: int
    save_steps: int
    optim: str
    group_by_length: bool
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_steps: int | None = None  # with an eval set: evaluate (and checkpoint) every N steps, keep the best


def plan_steps(n_examples: int, opt: TrainOptions) -> tuple[int, int, int]:
    """(world size, total optimizer steps, warm-up steps), counted as the Trainer counts them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = max(1, math.ceil(math.ceil(n_examples / (opt.batch_size * world)) / opt.grad_accum))
    total = opt.max_steps or math.ceil(per_epoch * opt.epochs)
    warmup = opt.warmup_steps if opt.warmup_steps is not None else (100 if total >= 1000 else round(0.1 * total))
    return world, total, warmup


def training_arguments(ckpt: Path, opt: TrainOptions, warmup: int, world: int):
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available()
    best = {} if opt.eval_steps is None else dict(  # the authors': evaluate and save together, load the best at the end
        eval_strategy="steps", eval_steps=opt.eval_steps, load_best_model_at_end=True, per_device_eval_batch_size=opt.batch_size)
    return TrainingArguments(
        output_dir=str(ckpt), per_device_train_batch_size=opt.batch_size, num_train_epochs=opt.epochs,
        gradient_accumulation_steps=opt.grad_accum,
        max_steps=opt.max_steps or -1, learning_rate=opt.lr, warmup_steps=warmup, lr_scheduler_type="linear",
        weight_decay=0.0, optim=opt.optim, logging_steps=1, save_strategy="steps",
        save_steps=opt.eval_steps or opt.save_steps, save_total_limit=1 if best else 2, seed=opt.seed,
        data_seed=opt.seed, report_to=[], disable_tqdm=True, use_cpu=cpu,
        train_sampling_strategy="group_by_length" if opt.group_by_length else "random", dataloader_num_workers=0,
        remove_unused_columns=False, ddp_backend="gloo" if cpu and world > 1 else None, **best)


def progress_callback(reporter, description: str):
    """A TrainerCallback that drives the workflow's reporter (one bar over the optimizer steps)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            reporter.start(description, state.max_steps)
            reporter.advance(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            reporter.advance(1)

    return ProgressCallback()


def build_trainer(model, causal_lm, tok, data, args, trainer_cls, extra: dict, callbacks):
    """A Trainer whose loss needs logits at answer positions only, where the model can compute just those."""
    from transformers import PrinterCallback

    extra = dict(extra)
    answer_only = "logits_to_keep" in inspect.signature(causal_lm.forward).parameters
    if answer_only:
        extra["compute_loss_func"] = answer_loss
    trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=Collator(tok.pad_token_id, answer_only),
                          callbacks=list(callbacks), **extra)
    trainer.remove_callback(PrinterCallback)  # the rich progress bar replaces its printed dicts
    return trainer


def last_checkpoint(ckpt: Path, resume: bool) -> str | None:
    """The newest *complete* checkpoint: the Trainer writes trainer_state.json last, so a run killed while saving
    leaves a folder without it, which transformers' get_last_checkpoint would pick and then fail to load."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not (resume and ckpt.is_dir()):
        return None
    steps = {d: d.name.rsplit("-", 1)[1] for d in ckpt.glob(f"{PREFIX_CHECKPOINT_DIR}-*")}
    done = {int(s): d for d, s in steps.items() if s.isdigit() and (d / TRAINER_STATE_NAME).is_file()}
    return str(done[max(done)]) if done else None


def training_versions() -> dict:
    import transformers

    # the kernels torch dispatched to (AVX2 or AVX512 on machines of this kind): their rounding differs, so the
    # same seed gives the same weights only on the same kernels (ATEN_CPU_CAPABILITY=avx2 pins them)
    v = {"torch": torch.__version__, "transformers": transformers.__version__,
         "torch_cpu_kernels": torch.backends.cpu.get_cpu_capability()}
    try:
        import peft

        v["peft"] = peft.__version__
    except ImportError:
        pass
    return v


def recorded_files(folder: Path) -> list[str]:
    """The files a harden (or reference) run recorded writing into its model folder: what --force may replace."""
    try:
        files = json.loads((folder / "safety_audit.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def write_model_folder(out: Path, model, tok, report: dict, force: bool, extra_files=None) -> None:
    """Write to a temporary sibling, then swap it in: a crash never leaves a half-written model folder. The
    saved config is an inference config (`use_cache` back on: training turned it off). The report lists the
    folder's files, so a later --force replaces this folder only while it holds nothing else."""
    tmp = temp_dir(out.parent, out.name)
    try:
        model.config.use_cache = True
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if extra_files:
            extra_files(tmp)
        report["files"] = sorted([str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()] + ["safety_audit.json"])
        (tmp / "safety_audit.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_dir(tmp, out, force, recorded_files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
