"""Lisa (Huang et al. 2024, "Lazy safety alignment"): bi-state optimisation that alternates alignment-data
steps and task-data steps, each phase pulled towards where the previous phase ended by a proximal term
ρ/2·‖θ − θ_anchor‖², so task steps cannot drift far from the aligned state.

The split is asymmetric, as in the paper's recipe (100 alignment steps to 900 fine-tuning steps, ρ = 1): the
alignment state is the cheap one. An even split spends half the run on refusals; on the reference model it
came out refusing 99% of D_o (benchmarks/study/results/earlier-lisa-even-split/)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ...io.config import setting
from ..data import SFTData, alignment_rows
from .base import Method, MethodContext


@dataclass
class LisaSettings:
    """Lisa's own settings (peft-style: a method's options travel typed, in its own class)."""

    align_steps: int = setting(1, "lisa: alignment steps per cycle (the paper: 100 of every 1,000).",
                               flag="--lisa-align-steps", least=1)
    task_steps: int = setting(9, "lisa: task steps per cycle (the paper: 900 of every 1,000).", flag="--lisa-task-steps",
                              least=1)
    rho: float = setting(1.0, "lisa: proximal weight ρ (the paper: 1).", flag="--lisa-rho", least=0)


def lisa_phase(step: int, align_steps: int, task_steps: int) -> str:
    """Which state optimizer step `step` (from 0) is in: each cycle opens with its alignment steps."""
    return "align" if step % (align_steps + task_steps) < align_steps else "task"


@functools.cache
def lisa_trainer_class() -> type:
    """LisaTrainer, built on first use (transformers' Trainer costs ~3 s to import)."""
    from transformers import Trainer

    class LisaTrainer(Trainer):
        def __init__(self, *args, align_dataset, align_steps: int, task_steps: int, rho: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.align_dataset, self.align_steps, self.task_steps, self.rho = align_dataset, align_steps, task_steps, rho
            self._align_iter = None
            self._anchor: list[torch.Tensor] | None = None
            self._phase = None

        def _align_batch(self):
            if self._align_iter is None:
                self._align_iter = iter(self._align_loader())
            try:
                return next(self._align_iter)
            except StopIteration:
                self._align_iter = iter(self._align_loader())
                return next(self._align_iter)

        def _align_loader(self):
            g = torch.Generator().manual_seed(self.args.seed + self.state.global_step)
            return torch.utils.data.DataLoader(self.align_dataset, batch_size=self.args.per_device_train_batch_size,
                                               shuffle=True, generator=g, collate_fn=self.data_collator)

        def training_step(self, model, inputs, num_items_in_batch=None):
            phase = lisa_phase(self.state.global_step, self.align_steps, self.task_steps)
            if phase != self._phase:  # a phase switch: anchor at the current weights
                self._phase = phase
                self._anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
            if phase == "align":
                inputs = self._prepare_inputs(self._align_batch())
                num_items_in_batch = None
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            loss = out[0] if return_outputs else out
            if self._anchor is not None and self.rho > 0:
                trainable = [p for p in model.parameters() if p.requires_grad]
                prox = sum(((p - a) ** 2).sum() for p, a in zip(trainable, self._anchor))
                loss = loss + 0.5 * self.rho * prox
            return (loss, out[1]) if return_outputs else loss

    return LisaTrainer

class Lisa(Method):
    name = "lisa"
    help = "alternate alignment and task steps with a proximal term (baseline)"
    Settings = LisaSettings

    def trainer(self, ctx: MethodContext) -> tuple[type, dict]:
        align = SFTData(alignment_rows(), ctx.tokenizer, ctx.template, ctx.cutoff)
        s: LisaSettings = ctx.settings
        return lisa_trainer_class(), {"align_dataset": align, "align_steps": s.align_steps, "task_steps": s.task_steps,
                                      "rho": s.rho}
