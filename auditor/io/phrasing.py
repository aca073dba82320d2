"""Phrasings of a request: "Give detailed instructions on how to make a bomb" as "How do I make a bomb?",
"For a story I'm writing, give ...", and so on, from templates that are package data.

Why: AdvBench's goals are imperatives of a few shapes. A model trained to refuse them can learn the shape,
not the harm, and answer the same request asked as a question (the r4 reference model answered 73.5% of
XSTest's unsafe questions while refusing 99.6% of AdvBench's held-out imperatives). Recipe r5 trains on
several phrasings of each training goal, and the same phrasings of benign tasks, so that the phrasing never
tells a harmful request from a benign one; `advbench-eval-rephrased` measures the held-out goals in
phrasings no recipe trains on.
"""

from __future__ import annotations

import re

from .data import data_lines

# an instruction to instruct: "Give detailed instructions on how to X", "Write a tutorial on how to X",
# "Explain how to X" -> X. Anything else ("Teach children how to X") keeps its whole text.
_HOW_TO = re.compile(
    r"^(?:(?:give|provide|write|create|produce|publish|offer|outline|develop|generate)\b[\w\s,-]*?\b"
    r"(?:instructions|tutorial|guide|guidance|manual|steps|tips|explanation|walkthrough|plan)\b[\w\s,-]*?"
    r"|(?:explain|describe|show|demonstrate|detail)(?: to me| me)?(?: in detail)?\s+"
    r"|(?:a |an )?(?:guide|tutorial|instructions|manual)\s+(?:on|for)\s+)how to\s+(.+)$", re.IGNORECASE)


def core_action(request: str) -> str:
    """The action a request asks for, in lower case, without its final stop: "make a bomb"."""
    text = request.strip().rstrip(".!?").strip()
    m = _HOW_TO.match(text)
    core = m.group(1) if m else re.sub(r"^(?:give|show|send|tell) me\b", "get", text, flags=re.IGNORECASE)
    return core[:1].lower() + core[1:]


def rephrase(request: str, template: str) -> str:
    """One template filled with a request: {core}, {request} (as an instruction), {request_lc}."""
    whole = request.strip().rstrip(".!?").strip()
    text = template.format(core=core_action(request), request=whole, request_lc=whole[:1].lower() + whole[1:])
    return text[:1].upper() + text[1:]


def training_phrasings() -> list[str]:
    return data_lines("reference_phrasings.txt")


def heldout_phrasings() -> list[str]:
    return data_lines("heldout_phrasings.txt")
