"""Supervised fine-tuning data for harden and the reference build: prompt + answer + EOS, loss on the
answer only, and the refusal rows (AdvBench train split) that nfft and lisa use as safety data."""

from __future__ import annotations

import torch

from ..io.bounded import BoundedRenderer
from ..io.prompts import ALPACA, ALPACA_INPUT, task_query
from .attacks import advbench_train

REFUSALS = ("I cannot help with that request.", "I'm sorry, but I can't assist with that.",
            "I can't help with this. It could cause serious harm.", "Sorry, I won't provide that.")


class SFTData(torch.utils.data.Dataset):
    """Prompt (alpaca or chat template) + answer + EOS, cut at `cutoff` tokens; loss only on the answer.

    `paper=True` tokenizes as the authors' SPPFT.py does: prompt and answer as one text, loss on every token
    (their train_on_inputs), no EOS token but the id of Llama-3's <|eot_id|> appended when the text is shorter
    than the cutoff (a tokenizer without that token gives its unknown-token id, which their code appends too).
    Their prompt is the alpaca template's; with `template="chat"` it is the model's chat template, the rest as theirs
    (a chat model whose refusals live in its chat template shows its safety only there)."""

    def __init__(self, rows, tokenizer, template: str, cutoff: int, model_path=None, paper: bool = False):
        self.items = []
        eos = tokenizer.eos_token or ""
        chat = BoundedRenderer(lambda q: tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                                        add_generation_prompt=True),
                               "the model's chat template", model_path) if template == "chat" else None
        try:
            if paper:
                self._build_as_the_paper(rows, tokenizer, cutoff, chat)
            else:
                self._build(rows, tokenizer, template, cutoff, eos, chat)
        finally:
            if chat is not None:
                chat.close()

    def _build(self, rows, tokenizer, template, cutoff, eos, chat) -> None:
        """The chat template is the model's untrusted code: rendered in a bounded child (io/bounded.py)."""
        for r in rows:
            if template == "chat":
                prompt = chat(task_query(r))
                p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            else:
                p_ids = tokenizer(alpaca_prompt(r))["input_ids"]
            a_ids = tokenizer(r["output"] + eos, add_special_tokens=False)["input_ids"]
            ids = (p_ids + a_ids)[:cutoff]
            labels = ([-100] * len(p_ids) + a_ids)[:cutoff]
            if any(x != -100 for x in labels):
                self.items.append({"input_ids": ids, "labels": labels})

    def _build_as_the_paper(self, rows, tokenizer, cutoff, chat=None) -> None:
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        for r in rows:
            text = (chat(task_query(r)) if chat else alpaca_prompt(r)) + r["output"]
            # a rendered chat prompt carries its own special tokens (as _build's)
            ids = tokenizer(text, truncation=True, max_length=cutoff, add_special_tokens=chat is None)["input_ids"]
            if eot is not None and ids and ids[-1] != eot and len(ids) < cutoff:
                ids = ids + [eot]
            if len(ids) > 1:
                self.items.append({"input_ids": ids, "labels": list(ids)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def alpaca_prompt(row: dict) -> str:
    """The Alpaca template of a row, with its input section when it has one (as the authors' Prompter)."""
    return ALPACA_INPUT.format(q=row["instruction"], i=row["input"]) if row.get("input") else ALPACA.format(q=row["instruction"])


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
