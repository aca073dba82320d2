"""Eval metrics' arithmetic (docs/METHOD.md §1.4): the exact McNemar test, MMLU 5-shot prompts and the answer
letter read from next-token probabilities, Rouge-L (rouge-score). Intervals: core/bootstrap.py."""

from __future__ import annotations

import csv
import io
import math
from fractions import Fraction


from ..errors import AuditError
from ..io.data import data_text

LETTERS = "ABCD"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under no difference the b + c discordant pairs split Binomial(n, 1/2).
    Exact arithmetic (2^n overflows a float past n = 1023); no scipy needed for one binomial tail.
    How the study uses it: docs/METHOD.md §1.5."""
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2 ** n)
    return float(min(Fraction(1), 2 * tail))


def mmlu_rows(limit: int | None) -> tuple[dict, list[dict]]:
    text = data_text("mmlu_subset_10subjects.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    dev: dict[str, list[dict]] = {}
    test = []
    for r in rows:
        (dev.setdefault(r["subject"], []) if r["split"] == "dev" else test).append(r)
    if limit:  # keep every subject represented
        per = max(1, limit // len(dev))
        test = [r for s in dev for r in [t for t in test if t["subject"] == s][:per]]
    return dev, test


def mmlu_item(row: dict, with_answer: bool) -> str:
    body = row["question"].strip() + "".join(f"\n{c}. {row[c]}" for c in LETTERS) + "\nAnswer:"
    return body + (f" {row['answer']}\n\n" if with_answer else "")


def mmlu_prompt(dev: list[dict], row: dict) -> str:
    subject = row["subject"].replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(mmlu_item(d, True) for d in dev[:5]) + mmlu_item(row, False)


def mmlu_predictions(backend, dev, test) -> list[str]:
    """5-shot, raw prompt; the answer is the letter whose token (' A' … ' D') is most probable next."""
    for fmt in (" {}", "{}"):  # ' A' is one token in most vocabularies; byte-level toy ones split it
        ids = [backend.token_ids(fmt.format(c)) for c in LETTERS]
        if all(len(x) == 1 for x in ids) and len({x[0] for x in ids}) == 4:
            letter_ids = [x[0] for x in ids]
            break
    else:
        raise AuditError("the tokenizer has no single tokens for the answer letters A-D")
    prompts = [mmlu_prompt(dev[r["subject"]], r) for r in test]
    p0 = backend.opening_probs(prompts, "raw", letter_ids)
    return [LETTERS[int(i)] for i in p0.argmax(1)]


def rouge_l(predictions, references) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
