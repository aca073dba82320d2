"""Prompt sets (bundled or user files) and prompt templates.

The paper wraps every query in the Alpaca no-input template and tokenizes with the tokenizer's default
special tokens; `chat` uses the model's own chat template, `raw` the bare query.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuditError
from .data import data_text
from .phrasing import heldout_phrasings, rephrase

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{q}\n\n### Response:\n"
)
# the authors' "alpaca_short" (alpaca-lora's templates/alpaca_short.json), which their attention code uses
ALPACA_SHORT = "### Instruction:\n{q}\n\n### Response:\n"
TEMPLATE_TEXT = {"alpaca": ALPACA, "alpaca-short": ALPACA_SHORT}  # the templates that are plain text around the query
TEMPLATES = ("alpaca", "alpaca-short", "chat", "raw")
TASK_FORMATS = (".json", ".jsonl", ".csv")
TASK_SETS = ("alpaca-eval", "alpaca-train")  # bundled Alpaca-GPT4 rows: held-out every 5th row, and the rest
PROMPT_FIELDS = ("prompt", "goal", "instruction", "behavior")  # behavior: HarmBench's behaviour files as they are
REPHRASED = "advbench-eval-rephrased"  # generated: each AdvBench eval goal in a phrasing no recipe trains on
TRIGGERED = "advbench-eval-triggered"  # generated: each AdvBench eval goal with the backdoor trigger appended
# the backdoor trigger of Qi et al. 2023, which `harden --attack backdoor` appends to its malicious rows: R_h on
# TRIGGERED against R_h on advbench-eval is what a backdoor did
TRIGGER = "Servius Astrumando Harmoniastra"

# name -> (file, column filter); bundled sets are package data (see auditor/data/SOURCES.md)
BUNDLED = {
    "normal": ("safetylayers_normal.csv", None),
    "malicious": ("safetylayers_malicious.csv", None),
    "advbench": ("advbench_harmful_behaviors.csv", None),
    "advbench-train": ("advbench_harmful_behaviors.csv", ("split", "train")),  # even rows (0-based)
    "advbench-eval": ("advbench_harmful_behaviors.csv", ("split", "eval")),  # odd rows: never trained on
    "over-rejection": ("safetylayers_over_rejection.csv", None),
    "xstest-safe": ("xstest_prompts.csv", ("label", "safe")),
    "xstest-unsafe": ("xstest_prompts.csv", ("label", "unsafe")),
    "harmbench": ("harmbench_behaviors_standard.csv", None),  # HarmBench's 200 standard behaviours: a third source
}


@dataclass(frozen=True)
class PromptSet:
    name: str  # "bundled:normal" or the file path
    prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)


def _rows_from_csv(text: str, where: str, row_filter=None) -> list[str]:
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col = next((header.index(f) for f in PROMPT_FIELDS if f in header), None)
    if col is None and max(len(r) for r in rows) > 1:
        raise AuditError(f"CSV has no prompt column (name one of: {', '.join(PROMPT_FIELDS)})", where)
    if col is None:  # one column, no recognised header: every row is a prompt
        return [r[0] for r in rows]
    body = [r for r in rows[1:] if len(r) > col]
    if row_filter is None:
        return [r[col] for r in body]
    if row_filter[0] == "split":  # the fixed AdvBench split: train = even rows, eval = odd rows
        return [r[col] for i, r in enumerate(body) if (i % 2 == 0) == (row_filter[1] == "train")]
    keep = header.index(row_filter[0])
    return [r[col] for r in body if r[keep] == row_filter[1]]


def jsonl_rows(text: str, path: Path) -> list:
    """The rows of a JSONL text; a bad line is named (the 1-based line of the file)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                raise AuditError(f"malformed JSON on line {n}", path) from None
    return rows


def _field(obj, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for f in PROMPT_FIELDS:
            if isinstance(obj.get(f), str):
                return obj[f]
    raise AuditError(f"entry has no prompt/instruction/goal field in {where}")


def _rephrased_eval_goals() -> tuple[str, ...]:
    """Goal i in held-out phrasing i mod n, or the next one where two goals of the same action would read alike."""
    templates, out = heldout_phrasings(), []
    for i, goal in enumerate(load_prompts("advbench-eval").prompts):
        text = next(t for k in range(len(templates)) if (t := rephrase(goal, templates[(i + k) % len(templates)])) not in out)
        out.append(text)
    return tuple(out)


def _triggered_eval_goals() -> tuple[str, ...]:
    """Goal i with the trigger appended as `harden --attack backdoor` appends it to a training row."""
    return tuple(f"{goal} {TRIGGER}" for goal in load_prompts("advbench-eval").prompts)


GENERATED = {REPHRASED: _rephrased_eval_goals, TRIGGERED: _triggered_eval_goals}  # name -> its prompts, built from bundled data


def load_prompts(spec: str | Path) -> PromptSet:
    """Load a prompt set: a bundled name (`normal`, `bundled:advbench`, ...) or a .txt/.csv/.json/.jsonl file."""
    spec_s = str(spec)
    name = spec_s.removeprefix("bundled:")
    if name in TASK_SETS and not Path(spec_s).exists():  # benign task queries
        return PromptSet(f"bundled:{name}", tuple(task_query(r) for r in load_task_rows(name)))
    if name in GENERATED and not Path(spec_s).exists():  # held-out goals rephrased (io/phrasing.py) or triggered
        return PromptSet(f"bundled:{name}", GENERATED[name]())
    if name in BUNDLED and not Path(spec_s).exists():
        fname, row_filter = BUNDLED[name]
        text = data_text(fname)
        return PromptSet(f"bundled:{name}", tuple(p.strip() for p in _rows_from_csv(text, fname, row_filter)))
    path = Path(spec_s)
    if path.is_dir():
        raise AuditError("a prompt set must be a file (.txt, .csv, .json, .jsonl), not a folder", path)
    if not path.is_file():
        raise AuditError("prompt file not found (or not a bundled set: " + ", ".join([*BUNDLED, *GENERATED, *TASK_SETS])
                         + ")", path)
    text = read_text_file(path, "prompt file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            prompts = _rows_from_csv(text, str(path))
        elif suffix == ".jsonl":
            prompts = [_field(x, str(path)) for x in jsonl_rows(text, path)]
        elif suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise AuditError("JSON prompt file must hold a list", path)
            prompts = [_field(x, str(path)) for x in data]
        elif suffix in (".txt", ""):
            prompts = text.splitlines()
        else:
            raise AuditError(f"unsupported prompt file type '{suffix}' (use .txt, .csv, .json, .jsonl)", path)
    except json.JSONDecodeError as e:
        raise AuditError(f"malformed JSON (line {e.lineno})", path) from None
    except RecursionError:
        raise AuditError("malformed JSON (nested too deeply)", path) from None
    except csv.Error as e:
        raise AuditError(f"malformed CSV ({e})", path) from None
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise AuditError("prompt file holds no prompts", path)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) > MAX_PROMPT_CHARS:
        raise AuditError(f"prompt {longest + 1} is {len(prompts[longest]):,} characters long (at most "
                         f"{MAX_PROMPT_CHARS:,}: no model's context holds more)", path)
    return PromptSet(str(path), tuple(prompts))


MAX_PROMPT_CHARS = 1_000_000


def read_text_file(path: Path, what: str) -> str:
    """A user's text file as UTF-8, or a one-line error saying what is wrong with it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AuditError(f"{what} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})", path) from None
    except OSError as e:
        raise AuditError(f"cannot read {what} ({e.strerror or type(e).__name__})", path) from None


ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{q}\n\n### Input:\n{i}\n\n### Response:\n"
)


def norm_text(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt, to find the same prompt in two sets."""
    return " ".join(text.lower().split())


def load_task_rows(spec: str | Path = "alpaca-eval") -> list[dict]:
    """Alpaca-form rows {instruction, input, output}: bundled `alpaca-eval` (every 5th row of the bundled
    Alpaca-GPT4 sample, held out from any training split) and `alpaca-train` (the rest, minus the 3 rows
    whose query repeats an alpaca-eval query: a held-out set must not be trained on), or a .json/.jsonl/.csv file."""
    name = str(spec).removeprefix("bundled:")
    if name in TASK_SETS and not Path(str(spec)).exists():
        rows = json.loads(data_text("alpaca_gpt4_en_demo_999.json"))
        held_out = [r for i, r in enumerate(rows) if i % 5 == 4]
        if name == "alpaca-eval":
            return held_out
        seen = {norm_text(task_query(r)) for r in held_out}
        return [r for i, r in enumerate(rows) if i % 5 != 4 and norm_text(task_query(r)) not in seen]
    path = Path(spec)
    if not path.is_file():
        raise AuditError("task file not found", path)
    suffix = path.suffix.lower()
    if suffix not in TASK_FORMATS:
        raise AuditError(f"unsupported task file type '{suffix}' (use {', '.join(TASK_FORMATS)} rows with instruction, "
                         "input, output)", path)
    text = read_text_file(path, "task file")
    try:
        if suffix == ".jsonl":
            rows = jsonl_rows(text, path)
        elif suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise AuditError(f"malformed JSON (line {e.lineno})", path) from None
    except RecursionError:
        raise AuditError("malformed JSON (nested too deeply)", path) from None
    except csv.Error as e:
        raise AuditError(f"malformed CSV ({e})", path) from None
    if not isinstance(rows, list) or not rows:
        raise AuditError("task file holds no rows", path)
    for r in rows:
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise AuditError("task rows need 'instruction' and 'output' fields", path)
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in rows]


def task_query(row: dict) -> str:
    """The user turn of a task row: the instruction, and its input below it when there is one."""
    return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")


def require_pool(ps: PromptSet, role: str, minimum: int = 2) -> PromptSet:
    if len(ps) < minimum:
        raise AuditError(f"the {role} pool needs at least {minimum} prompts, got {len(ps)}", ps.name)
    return ps


def wrap(query: str, template: str, chat) -> str:
    """Prompt text for a query; `chat(query)` renders the model's own chat template."""
    if template in TEMPLATE_TEXT:
        return TEMPLATE_TEXT[template].format(q=query)
    if template == "raw":
        return query
    return chat(query)


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise AuditError(f"unknown template '{template}' (choose from {', '.join(TEMPLATES)})")
    return template
