"""Safety judges: a judge reads each (instruction, response) pair in one of the formats of core/judge_formats.py
(qi2023 by default: the Qi et al. 2023 rubric, 1 safe … 5 fully harmful) and gives a verdict.

The judge is any OpenAI-compatible endpoint (`--judge URL`: vLLM, llama.cpp's server, TGI) or a local GGUF
run with llama.cpp (`--judge-model FILE.gguf`, for formats that are one user message or a raw prompt).
Answers a format cannot read are counted and listed, never guessed.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..backends import GENERATION, open_backend
from ..errors import AuditError
from ..io.http import Endpoint
from ..io.models import resolve_model
from .judge_formats import FORMATS, JudgeFormat, Verdict, parse_qi2023


def judge_format(name: str) -> JudgeFormat:
    if name not in FORMATS:
        raise AuditError(f"unknown judge format '{name}' (choose from {', '.join(FORMATS)})")
    return FORMATS[name]


def local_judge_can_ask(fmt: JudgeFormat) -> bool:
    """A local GGUF judge renders one user message (or takes a raw prompt); a conversation needs a server."""
    request = fmt.request("instruction", "response")
    return fmt.endpoint == "completions" or (len(request) == 1 and request[0]["role"] == "user")


def judge_prompt(instruction: str, response: str) -> str:
    """The qi2023 rubric filled in (the default format's one user message)."""
    return FORMATS["qi2023"].request(instruction, response)[0]["content"]


def parse_score(answer: str) -> int | None:
    """The qi2023 1–5 score (the last `#thescore:` marker, markdown variants accepted); None when there is none."""
    v = parse_qi2023(answer)
    return int(v.score) if v else None


class EndpointJudge:
    """POST {url}/chat/completions (OpenAI-compatible), temperature 0, through io/http.py's client: bounded
    retries of what another try may fix, a total deadline, no redirect followed, the key from `api_key_env`
    (never in a report or a message; plain http only to this machine unless `allow_insecure_http`)."""

    def __init__(self, url: str, model: str = "judge", retries: int = 3, timeout: float = 120.0, backoff: float = 0.5,
                 api_key_env: str | None = None, allow_insecure_http: bool = False):
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise AuditError(f"--judge-api-key-env {api_key_env}: that environment variable is not set")
        base = url.rstrip("/")
        self.endpoint = Endpoint(base if base.endswith("/v1") else base + "/v1", key, timeout, retries, backoff, "the judge",
                                 allow_insecure_http)
        self.url, self.model = self.endpoint.shown + "/chat/completions", model
        self.name = f"endpoint:{self.endpoint.shown}"

    def ask(self, prompt: str, max_tokens: int = 256) -> str:
        return self.answer([{"role": "user", "content": prompt}], "chat", max_tokens)

    def answer(self, request: list[dict] | str, endpoint: str, max_tokens: int) -> str:
        """The judge's text for chat messages (/chat/completions) or a raw prompt (/completions)."""
        body = {"model": self.model, "temperature": 0, "max_tokens": max_tokens}
        if endpoint == "chat":
            data = self.endpoint.post_json("/chat/completions", body | {"messages": request})
        else:
            data = self.endpoint.post_json("/completions", body | {"prompt": request})
        try:
            choice = data["choices"][0]
            return (choice["message"]["content"] if endpoint == "chat" else choice["text"]) or ""
        except (KeyError, IndexError, TypeError):
            raise AuditError("the judge answered with no completion", self.endpoint.shown) from None


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

    def answer(self, request: list[dict] | str, endpoint: str, max_tokens: int) -> str:
        """A raw prompt, or one user message through the model's own chat template; a conversation (Llama Guard)
        or a system message needs a server that applies the judge model's template to it."""
        if endpoint == "completions":
            return self.backend.generate([request], "raw", max_tokens)[0]
        if len(request) != 1 or request[0]["role"] != "user":
            raise AuditError("this judge format sends a conversation: serve the judge model and give --judge URL "
                             "(the server applies its template)", self.backend.model_ref.path)
        return self.ask(request[0]["content"], max_tokens)

    def close(self) -> None:
        self.backend.close()


def judge_responses(judge, fmt: JudgeFormat, instructions: Sequence[str], responses: Sequence[str],
                    progress=None) -> list[tuple[str, Verdict | None]]:
    """(the judge's answer, its verdict or None) for every pair, in order."""
    out = []
    for ins, resp in zip(instructions, responses):
        answer = judge.answer(fmt.request(ins, resp), fmt.endpoint, fmt.max_tokens)
        out.append((answer, fmt.parse(answer)))
        if progress:
            progress(1)
    return out
