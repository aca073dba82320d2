"""`eval`: harmful rate R_h, harmful score S_h, over-refusal rate, Rouge-L, MMLU accuracy (DESIGN §1.4).

Every rate gets a percentile-bootstrap 95% CI over its prompts. Responses can be saved as JSONL and fed
back (`responses`) so a judge can be re-run without regenerating.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .errors import AuditError
from .judge import EndpointJudge, LocalJudge, score_responses
from .models import open_backend, resolve_model
from .prompts import check_template, load_prompts, load_task_rows, task_query
from .refusal import make_classifier

SCHEMA_VERSION = 1
METRICS = ("harmful", "judge", "over-refusal", "rouge", "mmlu")
LETTERS = "ABCD"


@dataclass
class EvalConfig:
    model: str | None = None
    backend: str = "auto"
    template: str = "auto"  # auto: the model's chat template when it has one, else alpaca
    metrics: tuple[str, ...] = ("harmful", "over-refusal", "mmlu")
    harmful: str = "advbench-eval"
    over_refusal: tuple[str, ...] = ("xstest-safe", "over-rejection")
    task: str = "alpaca-eval"
    classifier: str = "prefix"
    max_new_tokens: int = 128
    limit: int | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    bootstrap: int = 1000
    seed: int = 0
    threads: int | None = None
    responses: str | None = None  # JSONL of saved responses to reuse
    saved: list = field(default_factory=list)  # filled during the run: what --save-responses writes


def bootstrap_mean(values, B: int, seed: int) -> dict:
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    out = {"value": float(x.mean()) if len(x) else None, "n": len(x)}
    if len(x) >= 2 and B > 0:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(x), (B, len(x)), generator=g)
        q = torch.quantile(x[idx].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64))
        out["ci95"] = [float(q[0]), float(q[1])]
    else:
        out["ci95"] = [out["value"], out["value"]]
    return out


def _limit(items, n):
    return list(items[:n]) if n else list(items)


def _mmlu_rows(limit: int | None) -> tuple[dict, list[dict]]:
    text = resources.files("auditor.data").joinpath("mmlu_subset_10subjects.csv").read_text(encoding="utf-8")
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


def _load_saved(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    try:
        rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        return {(r["metric"], r["prompt"]): r["response"] for r in rows}
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise AuditError("not a readable responses file (JSONL with metric, prompt, response)", p) from None


def run_eval(cfg: EvalConfig, reporter=None) -> dict:
    from .scan import _Silent

    reporter = reporter or _Silent()
    unknown = set(cfg.metrics) - set(METRICS)
    if unknown:
        raise AuditError(f"unknown metric '{sorted(unknown)[0]}' (choose from {', '.join(METRICS)})")
    if "judge" in cfg.metrics and not (cfg.judge_url or cfg.judge_model):
        raise AuditError("the judge metric needs --judge URL or --judge-model FILE.gguf")
    if cfg.template != "auto":
        check_template(cfg.template)
    model = resolve_model(cfg.model)
    saved = _load_saved(cfg.responses)
    t0 = time.perf_counter()
    judge = None
    if "judge" in cfg.metrics:
        judge = EndpointJudge(cfg.judge_url) if cfg.judge_url else LocalJudge(cfg.judge_model, cfg.threads)
    reporter.status(f"loading {model.label}")
    backend = open_backend(model, cfg.backend, threads=cfg.threads)
    template = cfg.template if cfg.template != "auto" else ("chat" if backend.chat_template else "alpaca")
    classifier = make_classifier(cfg.classifier, cfg.max_new_tokens)
    report = {"schema_version": SCHEMA_VERSION, "tool": f"safety-audit {__version__}", "command": "eval",
              "model": model.label, "backend": backend.name, "template": template,
              "classifier": classifier.describe(), "max_new_tokens": cfg.max_new_tokens, "limit": cfg.limit,
              "config": {"metrics": list(cfg.metrics), "harmful": cfg.harmful, "over_refusal": list(cfg.over_refusal),
                         "task": cfg.task, "classifier": cfg.classifier, "max_new_tokens": cfg.max_new_tokens,
                         "limit": cfg.limit, "template": cfg.template, "backend": cfg.backend}}

    def responses(metric: str, queries: list[str], max_new: int | None = None) -> list[str]:
        missing = [q for q in queries if (metric, q) not in saved]
        reporter.start(f"{metric}: generating", len(missing))
        fresh = dict(zip(missing, backend.generate(missing, template, max_new or cfg.max_new_tokens, reporter.advance)))
        out = [saved.get((metric, q), fresh.get(q)) for q in queries]
        cfg.saved.extend({"metric": metric, "prompt": q, "response": r} for q, r in zip(queries, out))
        return out

    def refusals(metric, queries):
        if cfg.classifier == "prefix":
            return [classifier.is_refusal(r) for r in responses(metric, queries)]
        reporter.start(f"{metric}: probe", len(queries))
        return classifier.decide(backend, queries, template, reporter.advance)

    try:
        if "harmful" in cfg.metrics or "judge" in cfg.metrics:
            harmful = load_prompts(cfg.harmful)
            qs = _limit(harmful.prompts, cfg.limit)
            if "harmful" in cfg.metrics:
                ref = refusals("harmful", qs)
                report["harmful_rate"] = {**bootstrap_mean([not r for r in ref], cfg.bootstrap, cfg.seed), "set": harmful.name}
            if judge is not None:
                resp = responses("harmful", qs)
                reporter.start(f"judge · {judge.name}", len(qs))
                scores = score_responses(judge, qs, resp, reporter.advance)
                good = [s for s in scores if s is not None]
                report["harmful_score"] = {**bootstrap_mean(good, cfg.bootstrap, cfg.seed), "unparseable": len(scores) - len(good),
                                           "judge": judge.name, "set": harmful.name}
        if "over-refusal" in cfg.metrics:
            by_set = {}
            for spec in cfg.over_refusal:
                ps = load_prompts(spec)
                ref = refusals(f"over-refusal:{ps.name}", _limit(ps.prompts, cfg.limit))
                by_set[ps.name] = bootstrap_mean(ref, cfg.bootstrap, cfg.seed)
            first = next(iter(by_set))
            report["over_refusal_rate"] = {**by_set[first], "set": first}
            report["over_refusal_by_set"] = by_set
        if "rouge" in cfg.metrics:
            rows = _limit(load_task_rows(cfg.task), cfg.limit)
            preds = responses("rouge", [task_query(r) for r in rows])
            report["rouge_l"] = {**bootstrap_mean(rouge_l(preds, [r["output"] for r in rows]), cfg.bootstrap, cfg.seed),
                                 "set": str(cfg.task)}
        if "mmlu" in cfg.metrics:
            dev, test = _mmlu_rows(cfg.limit)
            reporter.start("mmlu: 5-shot", len(test))
            preds = mmlu_predictions(backend, dev, test)
            reporter.advance(len(test))
            report["mmlu_accuracy"] = {**bootstrap_mean([p == r["answer"] for p, r in zip(preds, test)], cfg.bootstrap, cfg.seed),
                                       "subjects": len(dev), "shots": 5}
    finally:
        backend.close()
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report
