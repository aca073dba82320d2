"""Prompt sets (bundled or user files) and prompt templates.

The paper wraps every query in the Alpaca no-input template and tokenizes with the tokenizer's default
special tokens; `chat` uses the model's own chat template, `raw` the bare query.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import AuditError

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{q}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat", "raw")
PROMPT_FIELDS = ("prompt", "goal", "instruction")

# name -> (file, column filter); bundled sets are package data (see auditor/data/SOURCES.md)
BUNDLED = {
    "normal": ("safetylayers_normal.csv", None),
    "malicious": ("safetylayers_malicious.csv", None),
    "advbench": ("advbench_harmful_behaviors.csv", None),
    "over-rejection": ("safetylayers_over_rejection.csv", None),
    "xstest-safe": ("xstest_prompts.csv", ("label", "safe")),
    "xstest-unsafe": ("xstest_prompts.csv", ("label", "unsafe")),
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
    if col is None:  # no recognised header: first column, every row is a prompt
        return [r[0] for r in rows]
    keep = None
    if row_filter is not None:
        keep = (header.index(row_filter[0]), row_filter[1])
    return [r[col] for r in rows[1:] if len(r) > col and (keep is None or r[keep[0]] == keep[1])]


def _field(obj, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for f in PROMPT_FIELDS:
            if isinstance(obj.get(f), str):
                return obj[f]
    raise AuditError(f"entry has no prompt/instruction/goal field in {where}")


def load_prompts(spec: str | Path) -> PromptSet:
    """Load a prompt set: a bundled name (`normal`, `bundled:advbench`, ...) or a .txt/.csv/.json/.jsonl file."""
    spec_s = str(spec)
    name = spec_s.removeprefix("bundled:")
    if name in BUNDLED and not Path(spec_s).exists():
        fname, row_filter = BUNDLED[name]
        text = resources.files("auditor.data").joinpath(fname).read_text(encoding="utf-8")
        return PromptSet(f"bundled:{name}", tuple(p.strip() for p in _rows_from_csv(text, fname, row_filter)))
    path = Path(spec_s)
    if not path.is_file():
        raise AuditError("prompt file not found (or not a bundled set: " + ", ".join(BUNDLED) + ")", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"cannot read prompt file ({type(e).__name__})", path) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            prompts = _rows_from_csv(text, str(path))
        elif suffix == ".jsonl":
            prompts = [_field(json.loads(line), str(path)) for line in text.splitlines() if line.strip()]
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
    except csv.Error as e:
        raise AuditError(f"malformed CSV ({e})", path) from None
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise AuditError("prompt file holds no prompts", path)
    return PromptSet(str(path), tuple(prompts))


def require_pool(ps: PromptSet, role: str, minimum: int = 2) -> PromptSet:
    if len(ps) < minimum:
        raise AuditError(f"the {role} pool needs at least {minimum} prompts, got {len(ps)}", ps.name)
    return ps


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise AuditError(f"unknown template '{template}' (choose from {', '.join(TEMPLATES)})")
    return template
