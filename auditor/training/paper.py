"""The authors' fine-tuning recipe (`harden --compat paper`), as their code runs it, and how their code numbers
layers. Read from `Code/Fine_tune/SPPFT.py` and `Code/Safety_layers_locating/scaling.py` of public copies of
their repository (listen0425/Safety-Layers); docs/METHOD.md says what each choice does on a small data set.

Three numberings of one layer range:
- the paper prints [i, j] (e.g. [6, 12] for Llama-3-8B-Instruct), read here as inclusive, 0-based;
- their freezing code freezes `begin < l < end` (both ends open): begin 4, end 15 freezes 5..14;
- their scaling code scales `range(begin, end)` (end open): 5, 15 scales 5..14.
`--compat paper` reads `--layers i-j` as their freezing code would (and locate's and attention's ranges as
their scaling code would), so a command copied from their scripts touches the layers theirs did.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AuditError


@dataclass(frozen=True)
class PaperRecipe:
    batch_size: int = 4  # micro_batch_size
    effective_batch: int = 128  # batch_size: gradient_accumulation_steps = 128 // 4 (// world size under DDP)
    epochs: float = 3.0
    warmup_steps: int = 100  # fixed: on ~4,000 rows (94 optimizer steps) the learning rate never leaves warm-up
    lr: float = 3e-5
    cutoff: int = 256
    template: str = "alpaca"
    # their train_on_inputs=True (loss on prompt and answer) and their EOS rule (<|eot_id|>'s id appended) are how
    # training.data.SFTData(paper=True) tokenizes: a way of building rows, not a number to set
    val_rows: int = 100  # held out (seed 42), evaluated every 550 steps, best checkpoint loaded at the end
    eval_steps: int = 550
    optim: str = "adamw_torch"

    def grad_accum(self, world: int = 1) -> int:
        return max(1, self.effective_batch // self.batch_size // world)


PAPER = PaperRecipe()


def frozen_by_their_code(begin: int, end: int) -> tuple[int, int]:
    """SPPFT.py's `begin_num < layer_number < end_num`, as an inclusive range."""
    if end - begin < 2:
        raise AuditError(f"--compat paper reads --layers {begin}-{end} as the authors' freezing code does (layers "
                         f"strictly between {begin} and {end}): that freezes no layer")
    return begin + 1, end - 1


def scaled_by_their_code(begin: int, end: int) -> tuple[int, int]:
    """scaling.py's `range(begin_num, end_num)`, as an inclusive range."""
    if end <= begin:
        raise AuditError(f"--compat paper reads {begin}-{end} as the authors' scaling code does (range({begin}, {end})): "
                         "that scales no layer")
    return begin, end - 1
