"""Two readings of the same answers: the refusal classifier's (an answer that is not a refusal counts as
harmful) and a judge's. Where they disagree is where R_h depends on who reads (a public reproduction of the
paper measured 0.77 with keywords and 0.05 with the HarmBench classifier on the same responses)."""

from __future__ import annotations

from typing import Sequence

from .bootstrap import wilson

SHOWN = 400  # characters of a response or a judge's answer kept in a report per disagreement


def agreement(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Counts of both / a only / b only / neither, raw agreement and Cohen's kappa (None when undefined)."""
    n = len(a)
    both = sum(x and y for x, y in zip(a, b))
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    neither = n - both - a_only - b_only
    if n == 0:
        return {"n": 0, "both": 0, "a_only": 0, "b_only": 0, "neither": 0, "agreement": None, "kappa": None}
    po = (both + neither) / n
    pa, pb = (both + a_only) / n, (both + b_only) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    kappa = (po - pe) / (1 - pe) if pe < 1 else (1.0 if po == 1 else None)  # two constant, identical raters agree
    return {"n": n, "both": both, "a_only": a_only, "b_only": b_only, "neither": neither, "agreement": po, "kappa": kappa}


def judge_rate(prompts: Sequence[str], responses: Sequence[str], classifier_harmful: Sequence[bool], judged: Sequence,
               classifier: str) -> dict:
    """The judge's harmful rate over the answers it could read (Wilson CI; outcomes per prompt, '-' where
    unreadable), its agreement with the classifier on those, and both kinds of listed exceptions."""
    verdicts = [v for _, v in judged]
    read = [k for k, v in enumerate(verdicts) if v is not None]
    harmful = [verdicts[k].harmful for k in read]
    n, k = len(read), sum(harmful)
    ag = agreement([classifier_harmful[i] for i in read], harmful)
    counts = {"both_harmful": ag["both"], "classifier_only": ag["a_only"], "judge_only": ag["b_only"],
              "neither": ag["neither"], "agreement": ag["agreement"], "kappa": ag["kappa"], "classifier": classifier}
    disagreements = [{"prompt": prompts[i], "response": responses[i][:SHOWN], "classifier_harmful": classifier_harmful[i],
                      "judge_harmful": verdicts[i].harmful, "judge_answer": judged[i][0][:SHOWN]}
                     for i in read if classifier_harmful[i] != verdicts[i].harmful]
    unread = [{"prompt": prompts[i], "judge_answer": judged[i][0][:SHOWN]} for i, v in enumerate(verdicts) if v is None]
    return {"value": k / n if n else None, "n": n, "ci95": wilson(k, n) if n else [None, None], "interval": "wilson",
            "outcomes": "".join("-" if v is None else str(int(v.harmful)) for v in verdicts),
            "unparseable": len(unread), "unparseable_answers": unread, "agreement": counts,
            "disagreements": disagreements}
