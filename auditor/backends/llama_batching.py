"""Continuous batching for the llama.cpp backend: many sequences in one context, one `llama_decode` per step.

Why: a one-prompt, one-token decode streams every weight of the model from memory to produce one token; with
B sequences per decode the same read serves B tokens. Each step decodes one token for every live sequence
and prefills waiting prompts into free slots (distinct sequence ids, logits only at each prompt's last
token); a sequence that finishes (end of generation, its token budget, or a verdict that can no longer
change) frees its slot and KV cells at once, and the next prompt joins. The context has no eval callback
(that is for hidden states, on its own context) and one KV stream per sequence (`kv_unified` off: a token
attends only to its own sequence's cells).
"""

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import llama_cpp as L
import numpy as np

from ..errors import AuditError
from .base import Generated, Stop


@dataclass
class _Slot:
    index: int  # which prompt
    pos: int  # next position
    last: int = -1  # the token to decode next
    pieces: list[bytes] = field(default_factory=list)


def context_params(n_seq: int, per_seq: int, n_batch: int, threads: int):
    p = L.llama_context_default_params()
    p.n_seq_max = n_seq
    p.n_ctx = n_seq * per_seq
    p.n_batch = n_batch
    p.n_ubatch = min(n_batch, 512)
    p.kv_unified = False
    p.n_threads = p.n_threads_batch = threads
    p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the states context: repeatable numbers
    p.no_perf = True
    return p


class BatchedDecoder:
    """Greedy decoding of many prompts through one context of `n_seq` sequences of `per_seq` cells each."""

    def __init__(self, model, vocab, n_seq: int, per_seq: int, threads: int, piece: Callable[[int], bytes]):
        self.vocab, self.piece, self.n_seq, self.per_seq = vocab, piece, n_seq, per_seq
        self.n_batch = max(512, per_seq)
        self.n_vocab = L.llama_vocab_n_tokens(vocab)
        self.ctx = L.llama_init_from_model(model, context_params(n_seq, per_seq, self.n_batch, threads))
        if not self.ctx:
            raise AuditError(f"llama.cpp could not create a context of {n_seq} x {per_seq} tokens")
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None

    def _add(self, n: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos, 1, logits
        b.seq_id[n][0] = seq

    def _logits(self, i: int) -> np.ndarray:
        return np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def run(self, prompts: list[list[int]], max_new: int, stop: Stop | None = None, progress=None,
            first_logits: Callable[[int, np.ndarray], None] | None = None) -> list[Generated]:
        """Greedy continuations of every prompt (`max_new` tokens at most). `first_logits(i, logits)` sees the
        next-token logits after prompt i (MMLU reads the answer letter there; max_new = 0 then)."""
        too_long = [len(p) for p in prompts if len(p) + max(max_new, 1) > self.per_seq or len(p) > self.n_batch]
        if too_long:
            raise AuditError(f"a prompt of {too_long[0]} tokens does not fit the context ({self.per_seq} per sequence)")
        mem = L.llama_get_memory(self.ctx)
        L.llama_memory_clear(mem, True)
        out: list[Generated | None] = [None] * len(prompts)
        pending, free, live = deque(range(len(prompts))), list(range(self.n_seq - 1, -1, -1)), {}
        while pending or live:
            rows = self._fill(prompts, pending, free, live)
            self._decode(self.batch.n_tokens)
            for bi, seq in rows:
                slot, fresh = live[seq], not live[seq].pieces and live[seq].last == -1
                logits = self._logits(bi)
                if fresh and first_logits is not None:
                    first_logits(slot.index, logits)
                done = self._step(slot, int(np.argmax(logits)), max_new, stop)
                if done is not None:
                    out[slot.index] = done
                    L.llama_memory_seq_rm(mem, seq, -1, -1)
                    free.append(seq)
                    del live[seq]
                    if progress:
                        progress(1)
        return out

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        if L.llama_decode(self.ctx, self.batch) != 0:
            raise AuditError("llama.cpp decode failed (out of KV cells or memory)")

    def _prefill(self, tokens: list[int], pos: int, seq: int) -> None:
        """Decode `tokens` into `seq` from position `pos`, in batch-sized chunks; logits at the last token."""
        for c0 in range(0, len(tokens), self.n_batch):
            chunk = tokens[c0 : c0 + self.n_batch]
            for k, tok in enumerate(chunk):
                self._add(k, tok, pos + c0 + k, seq, c0 + k == len(tokens) - 1)
            self._decode(len(chunk))

    def run_prefixed(self, prefix: list[int], suffixes: list[list[int]], first_logits: Callable[[int, np.ndarray], None],
                     progress=None) -> None:
        """Next-token logits after prefix + each suffix. The prefix is decoded once into sequence 0 and kept;
        each suffix is decoded after it, read, and removed again (its cells from the prefix's end on). One
        suffix per decode on purpose: the logits are then bit-identical to a full prefill of the prompt
        (several sequences in one decode move llama.cpp's numerics, by up to ~0.03 in a probability on the
        bundled model), and a suffix of ~100 tokens already fills the matmuls."""
        mem = L.llama_get_memory(self.ctx)
        L.llama_memory_clear(mem, True)
        P = len(prefix)
        if P + max(map(len, suffixes)) > self.per_seq:
            raise AuditError(f"a prompt of {P + max(map(len, suffixes))} tokens does not fit the context ({self.per_seq})")
        self._prefill(prefix, 0, 0)
        for i, suffix in enumerate(suffixes):
            self._prefill(suffix, P, 0)
            first_logits(i, self._logits(self.batch.n_tokens - 1))
            L.llama_memory_seq_rm(mem, 0, P, -1)
            if progress:
                progress(1)

    def _fill(self, prompts, pending, free, live) -> list[tuple[int, int]]:
        """One decode's batch: a token for every live sequence, then waiting prompts into free slots."""
        n, rows = 0, []
        for seq, slot in live.items():
            self._add(n, slot.last, slot.pos, seq, True)
            rows.append((n, seq))
            slot.pos += 1
            n += 1
        while pending and free and n + len(prompts[pending[0]]) <= self.n_batch:
            i, seq = pending.popleft(), free.pop()
            toks = prompts[i]
            for k, tok in enumerate(toks):
                self._add(n + k, tok, k, seq, k == len(toks) - 1)
            n += len(toks)
            rows.append((n - 1, seq))
            live[seq] = _Slot(i, len(toks))
        self.batch.n_tokens = n
        return rows

    def _step(self, slot: _Slot, tok: int, max_new: int, stop: Stop | None) -> Generated | None:
        """Take the sampled token; a finished sequence's result, else None (it decodes `tok` next)."""
        if max_new == 0 or L.llama_vocab_is_eog(self.vocab, tok):
            return Generated(_text(slot.pieces), len(slot.pieces))
        slot.pieces.append(self.piece(tok))
        if len(slot.pieces) >= max_new:  # the last token's logits are never read: not decoded
            return Generated(_text(slot.pieces), len(slot.pieces))
        if stop is not None and stop(_text(slot.pieces)):
            return Generated(_text(slot.pieces), len(slot.pieces), stopped_early=True)
        slot.last = tok
        return None


def _text(pieces: list[bytes]) -> str:
    return b"".join(pieces).decode("utf-8", errors="replace")


def piece_fn(vocab) -> Callable[[int], bytes]:
    buf = ctypes.create_string_buffer(256)

    def piece(tok: int) -> bytes:
        n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    return piece
