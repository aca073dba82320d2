"""The safety-aligned reference model: the bundled SmolLM2-135M-Instruct, safety-aligned by supervised
fine-tuning with the harden stack, built reproducibly on the user's machine (no hub).

Why: the bundled model answers almost every harmful request, so nothing refusal-based (locate, harden
comparisons, eval deltas) can show an effect on it. The paper ties safety layers to alignment; the same
architecture before and after safety alignment is the cleanest contrast this product can demonstrate.

Recipe (chat template, loss on the answer only, full fine-tune, fp32 master weights):
- refusals (varied texts, `data/reference_refusals.txt`) for the AdvBench *train* split (even rows); the
  eval split (odd rows) is never trained on;
- benign instructions: the bundled Alpaca-GPT4 *train* rows (`alpaca-train`; `alpaca-eval` is held out)
  and requests written for this product that use words of harm or AdvBench's imperative forms
  (`data/reference_borderline.txt`), both answered with the bundled model's *own* greedy answers
  (self-distillation). Why self-distilled: trained on GPT-4's long answers, a 135M model meets a large,
  noisy loss on every benign row while a refusal text is easy to learn, and it learned refusal as the
  cheap answer to ordinary "Design ..."/"Create ..." tasks (r1/r2: 12-14% of alpaca-eval refused). On its
  own answers the benign loss is near zero until refusal leaks onto a benign prompt, and then it pushes
  exactly against that; what changes is the safety behaviour, not the model's helpfulness or style;
- no XSTest and no paper D_o prompt (evaluation sets).
The folder holds the HF model, a GGUF of it (so both backends work) and `safety_audit.json` (data hashes,
splits, seed, hyper-parameters, versions). `reference` is accepted wherever a MODEL is.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..backends import GENERATION, library_version
from ..core.refusal import KeywordClassifier
from ..errors import AuditError
from ..io.cache import Journal, sha256_json
from ..io.config import check_least, setting
from ..io.data import data_lines
from ..io.models import REFERENCE_RECIPES, ModelRef, recipe_name, reference_dir, resolve_model
from ..io.phrasing import rephrase, training_phrasings
from ..io.prompts import load_prompts, load_task_rows, norm_text, task_query
from ..training.attacks import advbench_train
from .harden import HardenConfig, check_numbers, run_harden
from .options import ModelOptions, Target
BENIGN_ROWS = 600  # alpaca-train queries (of 797) to self-distill: the build's time budget
# r5: each AdvBench train goal is also asked in this many other phrasings (refused). A draft with 2 refused
# 99.6% of AdvBench-eval and 85% of XSTest-unsafe, and also 38% of XSTest-safe and 79% of D_o: refusal had become
# the answer to any question with a word of harm (docs/reference-model.md). Hence 1, and more benign phrasings.
PHRASINGS_PER_GOAL = 1
BENIGN_PHRASINGS = 2  # r5: each imperative borderline request is also asked in this many phrasings (answered)
REPHRASED_ALPACA = 120  # r5: benign Alpaca-train tasks also asked in another phrasing (answered)


@dataclass
class ReferenceConfig:
    out: str | None = setting(None, "Output folder (default: the user cache, which is what MODEL 'reference' means).",
                              metavar="DIR")
    base: str | None = setting(None, "The model to align (default: the bundled SmolLM2; another base is another reference).",
                               metavar="MODEL")
    distill_tokens: int = setting(80, "Greedy tokens per self-distilled answer.", least=1)
    seed: int = setting(0, "Seed of the row order and training; each seed is its own reference build.")
    recipe: str = setting(REFERENCE_RECIPES[0], "r5: refusals of the AdvBench train goals in many phrasings "
                          "(questions, first person, polite, fiction, short, long), the same phrasings of benign "
                          "tasks answered; r4: the goals as written (MODEL 'reference:r4').", choices=REFERENCE_RECIPES)
    epochs: float = setting(1.0, "Epochs.")
    benign_rows: int | None = setting(BENIGN_ROWS, "Self-distill the first N of the 797 Alpaca-train queries (the "
                                                   "build-time budget).", least=0)
    lr: float = setting(1e-4, "Learning rate.", cli=False)
    batch_size: int = setting(8, "Batch size.", cli=False)
    cutoff: int = setting(192, "Cut each row at N tokens.", cli=False)
    gguf: str = setting("q8_0", "GGUF type written beside the HF folder.", cli=False)
    max_steps: int | None = setting(None, "Stop after N optimizer steps (quick runs).", least=1)
    threads: int | None = setting(None, "CPU threads (default: all cores).", least=1)
    force: bool = setting(False, "Rebuild over an existing reference model.")


def borderline_prompts() -> list[str]:
    return data_lines("reference_borderline.txt")


def refusal_texts() -> list[str]:
    return data_lines("reference_refusals.txt")


def evaluation_prompts() -> set[str]:
    """Prompts that must never be trained on: XSTest (both labels), the paper's D_o, AdvBench eval, HarmBench."""
    sets = ("xstest-safe", "xstest-unsafe", "over-rejection", "advbench-eval", "advbench-eval-rephrased", "harmbench")
    return {norm_text(p) for s in sets for p in load_prompts(s).prompts} | {
        norm_text(task_query(r)) for r in load_task_rows("alpaca-eval")}


def check_no_leak(prompts: list[str]) -> None:
    """Refuse a recipe that would train on an evaluation prompt."""
    evals = evaluation_prompts()
    leaked = [p for p in prompts if norm_text(p) in evals]
    if leaked:
        raise AuditError(f"reference recipe: a training prompt is an evaluation prompt ({leaked[0][:60]!r})")


def whole_sentences(text: str) -> str:
    """A distilled answer up to its last finished sentence ("" when it has none): an answer cut by the
    token limit must not teach the model to stop mid-sentence. A list number ("2.") ends no sentence."""
    t = text.strip()
    ends = [m.end() for m in re.finditer(r"(?<![0-9])[.!?][\"')]*(?=\s|$)", t)]
    return t[: ends[-1]].strip() if ends else ""


def rephrased_benign(benign_rows: int | None = BENIGN_ROWS) -> list[str]:
    """r5's benign side of the phrasings: the imperative borderline requests, each in BENIGN_PHRASINGS
    phrasings, and the first imperative Alpaca-train tasks (no input) in one (the i-th takes phrasing i mod n, so
    the prompts do not depend on the seed and their distilled answers are shared by every build)."""
    imperative = [p for p in borderline_prompts() if not p.endswith("?")]
    tasks = [r["instruction"] for r in load_task_rows("alpaca-train")[:benign_rows]
             if not r["input"] and not r["instruction"].strip().endswith("?")][:REPHRASED_ALPACA]
    templates, n = training_phrasings(), len(training_phrasings())
    step = n // BENIGN_PHRASINGS  # a request's phrasings far apart in the list: a question and a story, say
    return ([rephrase(p, templates[(i + k * step) % n]) for k in range(BENIGN_PHRASINGS) for i, p in enumerate(imperative)]
            + [rephrase(p, templates[i % n]) for i, p in enumerate(tasks)])


def distill_prompts(benign_rows: int | None = BENIGN_ROWS, recipe: str = REFERENCE_RECIPES[0]) -> list[str]:
    """Every prompt the recipe answers with the base model's own words: Alpaca-train queries, borderline,
    and for r5 their rephrasings."""
    base = [task_query(r) for r in load_task_rows("alpaca-train")[:benign_rows]] + borderline_prompts()
    return base + (rephrased_benign(benign_rows) if recipe == "r5" else [])


def training_rows(distilled: dict[str, str], seed: int = 0, benign_rows: int | None = BENIGN_ROWS,
                  recipe: str = REFERENCE_RECIPES[0]) -> tuple[list[dict], dict]:
    """The recipe's rows {instruction, input, output}, shuffled with `seed`, and a manifest of where every
    row came from. `distilled`: query -> the base model's own greedy answer (see `distill_prompts`)."""
    rng = random.Random(seed)
    refusals = refusal_texts()
    harmful = [(i, goal) for i, goal, _ in advbench_train()]
    parts: dict[str, list[dict]] = {"refusal": [{"instruction": g, "input": "", "output": refusals[rng.randrange(len(refusals))]}
                                                for _, g in harmful], "benign": [], "borderline": []}
    alpaca = load_task_rows("alpaca-train")[:benign_rows]  # never repeats an alpaca-eval query
    borderline = [{"instruction": p, "input": ""} for p in borderline_prompts()]
    sources = [("benign", alpaca), ("borderline", borderline)]
    if recipe == "r5":  # each goal in other phrasings, refused; the same phrasings of benign tasks, answered
        templates = training_phrasings()
        parts["refusal_rephrased"] = [{"instruction": rephrase(g, t), "input": "",
                                       "output": refusals[rng.randrange(len(refusals))]}
                                      for i, g in harmful for t in random.Random(f"phrasing-{i}").sample(
                                          templates, PHRASINGS_PER_GOAL)]  # the same phrasings for every seed
        parts["benign_rephrased"] = []
        sources.append(("benign_rephrased", [{"instruction": p, "input": ""} for p in rephrased_benign(benign_rows)]))
    flag = KeywordClassifier()
    dropped: dict[str, list[str]] = {kind: [] for kind, _ in sources}
    for kind, source in sources:
        for r in source:
            answer = whole_sentences(distilled.get(task_query(r)) or "")
            if answer and not flag.is_refusal(answer):
                parts[kind].append({"instruction": r["instruction"], "input": r["input"], "output": answer})
            else:
                dropped[kind].append(task_query(r))
    check_no_leak([task_query(r) for part in parts.values() for r in part])
    rows = [r for part in parts.values() for r in part]
    rng.shuffle(rows)
    manifest = {
        "recipe": recipe_name(recipe), "seed": seed, "rows_by_kind": {k: len(v) for k, v in parts.items()},
        "advbench_rows": [i for i, _ in harmful], "advbench_split": "train (even rows); eval = odd rows, never trained on",
        "alpaca_rows": f"alpaca-train[:{len(alpaca)}] (alpaca-train = rows i % 5 != 4 of the bundled Alpaca-GPT4 "
                       "sample minus those repeating an alpaca-eval query; alpaca-eval, rows i % 5 == 4, held out)",
        "answers": "benign and borderline: the base model's own greedy answers (chat template), cut to whole "
                   "sentences; refusals: data/reference_refusals.txt",
        "phrasings": ({"per_goal": PHRASINGS_PER_GOAL, "templates": len(training_phrasings()),
                       "source": "data/reference_phrasings.txt", "sha256": sha256_json(training_phrasings())}
                      if recipe == "r5" else None),
        "dropped_no_sentence_or_refusal": dropped,
        "refusal_texts": len(refusals), "excluded_sets": ["xstest", "over-rejection", "advbench-eval", "alpaca-eval"],
        "sha256": {k: sha256_json(v) for k, v in parts.items()},
    }
    return rows, manifest


def distill_key(base: ModelRef | Target, max_new_tokens: int) -> str:
    """The answers of exactly this base model (whatever its path or label), token budget and backend library."""
    target = base if isinstance(base, Target) else Target.of(base, ModelOptions(), (GENERATION,))
    return sha256_json([target.sha256, max_new_tokens, target.backend_name, library_version(target.backend_name)])


def distill(base: ModelRef, prompts: list[str], cache: Path, max_new_tokens: int, threads=None,
            reporter=None) -> dict[str, str]:
    """The base model's greedy chat answers to `prompts`, journaled as JSONL (a killed build resumes)."""
    journal = Journal(cache)
    target = Target.of(base, ModelOptions(threads=threads), (GENERATION,))
    key = distill_key(target, max_new_tokens)
    done = {r["prompt"]: r["response"] for r in journal.rows()
            if r.get("model") == key and isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str)}
    todo = [p for p in prompts if p not in done]
    if todo:
        backend = target.backend()
        if reporter:
            reporter.start("self-distilling benign answers", len(todo))
        try:
            for k in range(0, len(todo), 16):
                part = todo[k:k + 16]
                for p, r in zip(part, backend.generate(part, "chat", max_new_tokens)):
                    done[p] = r
                    journal.append({"model": key, "prompt": p, "response": r})
                if reporter:
                    reporter.advance(len(part))
        finally:
            target.close()
    return done


def build_reference(cfg: ReferenceConfig, reporter=None) -> dict:
    """Build (or resume building) the reference model into cfg.out / reference_dir(seed)."""
    base = resolve_model(cfg.base)
    out = Path(cfg.out) if cfg.out else reference_dir(cfg.seed, cfg.recipe)
    ckpt = out.with_name(out.name + ".checkpoints")
    hcfg = HardenConfig(out=str(out), model=cfg.base, method="full", template="chat", epochs=cfg.epochs, lr=cfg.lr,
                        batch_size=cfg.batch_size, cutoff=cfg.cutoff, seed=cfg.seed, save_steps=25,
                        gguf=cfg.gguf if base.is_gguf else None,
                        max_steps=cfg.max_steps, threads=cfg.threads, force=cfg.force,
                        resume=ckpt.is_dir(), group_by_length=True,
                        optim="adamw_torch")  # the recipe as measured: fused AdamW would change its weights' last bits
    check_numbers(hcfg)  # before the distillation, not after it
    check_least(cfg)
    if cfg.out is None:
        out.parent.mkdir(parents=True, exist_ok=True)  # the user cache; a given --out's parent must exist
    elif not out.parent.is_dir():
        raise AuditError("output's parent folder does not exist", out.parent)
    if out.exists() and not cfg.force:
        raise AuditError("the reference model is already built (use --force to rebuild)", out)
    advbench = [goal for _, goal, _ in advbench_train()]
    prompts = distill_prompts(cfg.benign_rows, cfg.recipe)
    check_no_leak(advbench + prompts)  # before 12 minutes of distillation, not after
    work = out.with_name(out.name + ".work")
    work.mkdir(exist_ok=True)
    answers = distill(base, prompts, work / "distilled.jsonl", cfg.distill_tokens, cfg.threads, reporter)
    rows, manifest = training_rows(answers, cfg.seed, cfg.benign_rows, cfg.recipe)
    key = sha256_json([rows, cfg.epochs, cfg.lr, cfg.batch_size, cfg.cutoff, cfg.max_steps, cfg.seed])
    if (work / "recipe.sha256").is_file() and (work / "recipe.sha256").read_text() != key:
        shutil.rmtree(ckpt, ignore_errors=True)  # checkpoints of another configuration: start over
        hcfg.resume = False
    (work / "recipe.sha256").write_text(key)
    report = run_harden(hcfg, reporter, rows=(rows, {"source": f"reference recipe {recipe_name(cfg.recipe)}", **manifest}))
    report["reference"] = {"recipe": recipe_name(cfg.recipe), "seed": cfg.seed, "path": str(out)}
    shutil.rmtree(work, ignore_errors=True)
    return report
