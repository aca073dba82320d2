"""OpenAI-compatible server backend: generation through a serving engine (llama.cpp's server, vLLM, TGI, ...).

Why: eval and check must scale past one machine, and should be able to test exactly the deployed artifact.
A server gives text only: its registry entry declares GENERATION and nothing else, so scan and locate (hidden
states, weight scaling) and MMLU (next-token probabilities) refuse it before anything runs. `chat` sends
messages to /v1/chat/completions (the server applies the model's chat template); `alpaca` and `raw` send the
wrapped prompt to /v1/completions. Requests run `batch_size` at a time, greedy (temperature 0), each with
bounded retries and a total deadline (io/http.py: no redirect followed, the key only over https or to this
machine, capped bodies, 4xx not retried); a server that stays down is a one-line error naming the URL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..errors import AuditError
from ..io.http import Endpoint, public_url
from ..io.models import ModelRef
from ..io.prompts import TEMPLATE_TEXT
from .base import Backend, Generated, Progress, Stop

DEFAULT_CONCURRENCY = 8


class OpenAIBackend(Backend):
    name = "openai"
    n_layers = 0
    hidden_size = 0
    chat_template = "server"  # the server applies the model's own

    def __init__(self, model: ModelRef, threads: int | None = None, batch_size: int | None = None,
                 retries: int = 3, timeout: float = 300.0, backoff: float = 0.5):
        self.model_ref, self.url, self.served = model, (model.url or "").rstrip("/"), model.served
        if not self.url.startswith(("http://", "https://")):
            raise AuditError("the openai backend needs --base-url http(s)://HOST:PORT[/v1]", public_url(self.url) or None)
        key = os.environ.get(model.api_key_env) if model.api_key_env else None
        if model.api_key_env and not key:
            raise AuditError(f"--api-key-env {model.api_key_env}: that environment variable is not set")
        root = self.url if self.url.endswith("/v1") else self.url + "/v1"
        self.endpoint = Endpoint(root, key, timeout, retries, backoff, "the server", model.allow_insecure_http)
        self.batch_size = batch_size or DEFAULT_CONCURRENCY  # requests in flight

    def encode(self, query: str, template: str) -> list[int]:
        raise AuditError("the openai backend does not tokenize (the server does)", self.endpoint.shown)

    def token_ids(self, text: str) -> list[int]:
        raise AuditError("the openai backend does not tokenize (the server does)", self.endpoint.shown)

    def tokens_needed(self, texts: Sequence[str]) -> int:
        """Without the tokenizer: one token per byte of the longest text, a safe overestimate."""
        return max(len(t.encode()) for t in texts)

    def _post(self, path: str, body: dict) -> dict:
        return self.endpoint.post_json(path, body)

    def _one(self, query: str, template: str, max_new_tokens: int) -> Generated:
        body = {"model": self.served or "default", "max_tokens": max_new_tokens, "temperature": 0.0}
        if template == "chat":
            out = self._post("/chat/completions", body | {"messages": [{"role": "user", "content": query}]})
            text = ((out.get("choices") or [{}])[0].get("message") or {}).get("content")
        else:
            prompt = TEMPLATE_TEXT[template].format(q=query) if template in TEMPLATE_TEXT else query
            out = self._post("/completions", body | {"prompt": prompt})
            text = (out.get("choices") or [{}])[0].get("text")
        if not isinstance(text, str):
            raise AuditError("the server answered with no completion", self.endpoint.shown)
        n = (out.get("usage") or {}).get("completion_tokens")
        return Generated(text, int(n) if isinstance(n, int) else 0)

    def complete(self, queries: Sequence[str], template: str, max_new_tokens: int = 16,
                 progress: Progress | None = None, stop: Stop | None = None) -> list[Generated]:
        """Every query, `batch_size` requests in flight; `stop` cannot end a server's generation early."""
        def run(q):
            g = self._one(q, template, max_new_tokens)
            if progress:
                progress(1)
            return g

        with ThreadPoolExecutor(self.batch_size) as pool:
            return list(pool.map(run, queries))
