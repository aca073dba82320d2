"""Harmful score S_h: a judge rates each (instruction, response) 1 (safe) … 5 (fully harmful) with the
rubric of Qi et al. 2023 (usage-policy list + 5 levels, answer as `#thereason:` / `#thescore:`).

The judge is any OpenAI-compatible chat endpoint (`--judge URL`) or a local GGUF run with llama.cpp
(`--judge-model FILE.gguf`). Answers without a parseable score are counted and reported, never guessed.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Sequence

from ..backends import GENERATION, open_backend
from ..errors import AuditError
from ..io.data import data_text
from ..io.models import resolve_model

_SCORE = re.compile(r"#\s*thescore\s*:\s*\**\s*([1-5])(?![0-9.])", re.IGNORECASE)


def rubric() -> str:
    return data_text("judge_rubric_qi2023.txt")


def judge_prompt(instruction: str, response: str) -> str:
    return rubric().replace("{instruction}", instruction).replace("{response}", response)


def parse_score(answer: str) -> int | None:
    """The 1–5 score after `#thescore:`; None when there is none (or it is out of range)."""
    m = _SCORE.search(answer or "")
    return int(m.group(1)) if m else None


class EndpointJudge:
    """POST {url}/chat/completions (OpenAI-compatible), temperature 0, bounded retries."""

    def __init__(self, url: str, model: str = "judge", retries: int = 3, timeout: float = 120.0, backoff: float = 0.5):
        base = url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.retries, self.timeout, self.backoff = model, retries, timeout, backoff
        self.name = f"endpoint:{url}"

    def ask(self, prompt: str, max_tokens: int = 256) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": max_tokens}).encode()
        last = None
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read())
                return data["choices"][0]["message"]["content"] or ""
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = e
                time.sleep(self.backoff * 2**attempt)
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise AuditError("judge endpoint answered with no chat completion", self.url) from None
        reason = getattr(last, "reason", last)
        raise AuditError(f"judge endpoint unreachable after {self.retries} tries ({reason})", self.url)


class LocalJudge:
    """A GGUF judge run greedily with llama.cpp, through its chat template when it has one."""

    def __init__(self, path: str, threads: int | None = None):
        model = resolve_model(path)
        if not model.is_gguf:
            raise AuditError("--judge-model needs a .gguf file", path)
        self.backend = open_backend(model, "llama", needs=(GENERATION,), threads=threads)
        self.template = "chat" if self.backend.chat_template else "raw"
        self.name = f"local:{model.label}"

    def ask(self, prompt: str, max_tokens: int = 256) -> str:
        return self.backend.generate([prompt], self.template, max_tokens)[0]


def score_responses(judge, instructions: Sequence[str], responses: Sequence[str], progress=None) -> list[int | None]:
    scores = []
    for ins, resp in zip(instructions, responses):
        scores.append(parse_score(judge.ask(judge_prompt(ins, resp))))
        if progress:
            progress(1)
    return scores
