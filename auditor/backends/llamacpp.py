"""llama.cpp backend (llama-cpp-python): GGUF models probed in their own quantized format.

llama.cpp has no public API for per-layer hidden states; the scheduler's eval callback does it: we answer
"yes" when asked about the `l_out-<k>` tensors (the residual stream after block k, before the final
norm) and copy the final prompt token's row inside the callback, since buffers are reused afterwards.
One prompt per decode, flash attention off for repeatability.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import llama_cpp as L  # heavy: this module is imported only when the registry opens the backend

from ..errors import AuditError
from ..io.files import temp_dir
from ..io.gguf_file import read_gguf
from ..io.models import ModelRef
from ..io.prompts import wrap
from ..weights.gguf_scaling import check_gguf_scaling, scale_gguf
from .base import Backend, Generated, Progress, Stop, prefix_groups
from .llama_batching import BatchedDecoder, piece_fn
from .llama_inplace import GgmlTensor, InPlaceScaler, WeightCapture, bind

_GGML_LOG_ERROR, _GGML_LOG_CONT = 4, 5  # ggml's enum today: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_last_level = 0
_held: list[str] | None = None  # while loading: errors are kept for our own message instead of printed


@L.llama_log_callback
def _log_errors_only(level: int, text: bytes, user_data) -> None:
    """llama.cpp's errors reach stderr, nothing else. (llama-cpp-python 0.3.36's own callback reads an older
    enum in which 3 was ERROR, so every warning - gemma's "control-looking token", the SWA cache line -
    leaked into the user's terminal.)"""
    global _last_level
    if level != _GGML_LOG_CONT:
        _last_level = level
    if _last_level == _GGML_LOG_ERROR:
        (_held.append if _held is not None else sys.stderr.write)(text.decode("utf-8", errors="replace"))


L.llama_log_set(_log_errors_only, ctypes.c_void_p(0))
_ggml = ctypes.CDLL(str(Path(L.__file__).parent / "lib" / "libggml-base.so"))
_ggml.ggml_get_name.restype = ctypes.c_char_p
_ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
_ggml.ggml_nelements.restype = ctypes.c_int64
_ggml.ggml_nelements.argtypes = [ctypes.c_void_p]
_ggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_ggml.ggml_backend_tensor_get.restype = None
bind(_ggml)
_GGML_TYPE_F32 = 0
L.llama_backend_init()
AUTO_BATCH = 32  # sequences per decode: benchmarks/bench_generate.py


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return True  # unknown: the safe side


class LlamaCppBackend(Backend):
    name = "llama"

    def __init__(self, model: ModelRef, threads: int | None = None, batch_size: int | None = None):
        self.model_ref = model
        info = read_gguf(model.path)
        self.architecture = info.architecture
        self.chat_template = info.metadata.get("tokenizer.chat_template")
        self.threads = threads or os.cpu_count() or 1
        self._model = self._ctx = None
        self._load(model.path)
        self.n_layers = int(L.llama_model_n_layer(self._model))
        self.hidden_size = int(L.llama_model_n_embd(self._model))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self._rows: dict[int, np.ndarray] = {}
        self._want_row = 0
        self.batch_size = batch_size  # sequences per generation decode (None: AUTO_BATCH)
        self._want_norm = False  # also capture the final norm's output (the paper's last-layer state)
        self._gen: BatchedDecoder | None = None
        self._capture: WeightCapture | None = None  # while finding the weight tensors (one short decode)
        self._inplace: InPlaceScaler | bool | None = None  # None: not tried yet; False: not possible here
        self._cb = L.ggml_backend_sched_eval_callback(self._eval_callback)  # keep a reference

    # -- model and context ---------------------------------------------------------------------------
    def _load(self, path: Path, writable: bool = False) -> None:
        """Load (or reload) the model. writable: in plain, writable memory in the file's own block layout (no
        mmap, no repacked buffers), so its weights can be scaled in place (llama_inplace.py)."""
        self.close()
        mparams = L.llama_model_default_params()
        # the extra buffer types hold ggml's repacked weights (batched decodes 1.3x faster on Q4_1 here); on an AMX
        # CPU they include the AMX path, which GCC 12 miscompiles in native builds (llama.cpp #20824): off there
        mparams.use_extra_bufts = not _cpu_has_amx() and not writable
        if writable:  # read into ordinary memory (an mmapped file is read-only)
            mparams.load_mode = L.LLAMA_LOAD_MODE_NONE
        global _held
        _held = []
        try:
            self._model = L.llama_model_load_from_file(str(path).encode(), mparams)
        finally:
            said, _held = [x.strip() for x in "".join(_held).splitlines() if x.strip()], None
        if not self._model:  # llama.cpp's first reason, without its function-name prefix, in our one line
            reason = said[0].split(": ", 1)[-1].removeprefix("error loading model: ") if said else f"architecture '{self.architecture}' unknown or file corrupt"
            raise AuditError(f"llama.cpp cannot load this model ({reason})", path)
        self._vocab = L.llama_model_get_vocab(self._model)
        self._piece = piece_fn(self._vocab)
        self._n_ctx = 0

    def _ensure_ctx(self, n_tokens: int) -> None:
        if self._ctx is not None and n_tokens <= self._n_ctx:
            return
        if self._ctx is not None:
            L.llama_free(self._ctx)
        n = max(512, 1 << (int(n_tokens) - 1).bit_length())
        p = L.llama_context_default_params()
        p.n_ctx = p.n_batch = p.n_ubatch = n  # one micro-batch per prompt: the callback fires once per layer
        p.n_seq_max = 1
        p.n_threads = p.n_threads_batch = self.threads
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.cb_eval = self._cb
        p.cb_eval_user_data = None
        p.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, p)
        if not self._ctx:
            raise AuditError("llama.cpp could not create a context", self.model_ref.path)
        self._n_ctx = n

    def _eval_callback(self, t, ask, user_data) -> bool:
        if ask and self._capture is not None:
            self._capture.see(t)
        name = _ggml.ggml_get_name(t) or b""
        wanted = name.startswith(b"l_out-") or (self._want_norm and name == b"result_norm")
        if not wanted:
            return False if ask else True
        if ask:
            return True
        view = GgmlTensor.from_address(t)
        d, rows = int(view.ne[0]), int(view.ne[1])
        if view.type != _GGML_TYPE_F32 or d != self.hidden_size:
            return True
        # the last layer keeps only the rows whose logits were requested (one: the final token)
        row = self._want_row if rows > self._want_row else rows - 1
        buf = np.empty(d, dtype=np.float32)
        _ggml.ggml_backend_tensor_get(t, buf.ctypes.data, row * int(view.nb[1]), d * 4)
        self._rows[-1 if name == b"result_norm" else int(name[6:])] = buf
        return True

    # -- prompts -----------------------------------------------------------------------------------
    def _token_text(self, tid: int) -> str:
        return (L.llama_vocab_get_text(self._vocab, tid) or b"").decode("utf-8", errors="replace")

    def render_chat(self, query: str) -> str:
        if not self.chat_template:
            raise self.no_chat_template()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = (self._token_text(L.llama_vocab_eos(self._vocab)), self._token_text(L.llama_vocab_bos(self._vocab)))
        compiled = {}

        def render(q: str) -> str:  # runs in the bounded child: compiling the template happens there too
            if "fmt" not in compiled:  # llama-cpp-python renders in Jinja's ImmutableSandboxedEnvironment
                compiled["fmt"] = Jinja2ChatFormatter(template=self.chat_template, eos_token=eos, bos_token=bos)
            return compiled["fmt"](messages=[{"role": "user", "content": q}]).prompt

        return self.bounded_chat(query, render)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, True)
        if n < 0:
            raise AuditError("tokenization failed", self.model_ref.path)
        return list(buf[:n])

    def encode(self, query: str, template: str) -> list[int]:
        text = wrap(query, template, self.render_chat)
        # chat templates carry their own BOS; otherwise the tokenizer's default special tokens (paper)
        return self.tokenize(text, add_special=template != "chat")

    # -- states -------------------------------------------------------------------------------------
    def _states_for(self, tokens: list[int]) -> np.ndarray:
        self._ensure_ctx(len(tokens))
        L.llama_memory_clear(L.llama_get_memory(self._ctx), True)
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            self._rows, self._want_row = {}, len(tokens) - 1
            rc = L.llama_decode(self._ctx, batch)
        finally:
            L.llama_batch_free(batch)
        if rc != 0:
            raise AuditError(f"llama.cpp decode failed (code {rc})", self.model_ref.path)
        missing = [k for k in range(self.n_layers) if k not in self._rows]
        if missing:
            raise AuditError(f"llama.cpp did not expose layer outputs {missing[:3]} for this architecture", self.model_ref.path)
        return np.stack([self._rows[k] for k in range(self.n_layers)])

    def states_for_ids(self, ids: list[list[int]], progress: Progress | None = None,
                       last_normed: bool = False) -> torch.Tensor:
        out = torch.empty(self.n_layers, len(ids), self.hidden_size)
        self._want_norm = last_normed
        try:
            for i, toks in enumerate(ids):
                out[:, i] = torch.from_numpy(self._states_for(toks))
                if last_normed:
                    if -1 not in self._rows:
                        raise AuditError("llama.cpp did not expose the final norm's output (result_norm)", self.model_ref.path)
                    out[-1, i] = torch.from_numpy(self._rows[-1])
                if progress:
                    progress(1)
        finally:
            self._want_norm = False
        return out

    # -- generation and next-token probabilities ---------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        return self.tokenize(text, add_special=False)

    def _decoder(self, n_prompts: int, per_seq: int) -> BatchedDecoder:
        """The generation context, (re)made when a call needs more sequences or longer ones."""
        n_seq = max(1, min(self.batch_size or AUTO_BATCH, n_prompts))
        per_seq = -(-per_seq // 256) * 256  # rounded up: later calls of similar size reuse the context
        d = self._gen
        if d is None or d.n_seq < n_seq or d.per_seq < per_seq:
            if d is not None:
                d.close()
            self._gen = d = BatchedDecoder(self._model, self._vocab, max(n_seq, d.n_seq if d else 0),
                                           max(per_seq, d.per_seq if d else 0), self.threads, self._piece)
        return d

    def complete(self, queries: Sequence[str], template: str, max_new_tokens: int = 16,
                 progress: Progress | None = None, stop: Stop | None = None) -> list[Generated]:
        """Greedy decoding of all queries with continuous batching (llama_batching.py)."""
        ids = [self.encode(q, template) for q in queries]
        if not ids:
            return []
        d = self._decoder(len(ids), max(len(x) for x in ids) + max_new_tokens)
        return d.run(ids, max_new_tokens, stop, progress)

    def opening_probs(self, queries: Sequence[str], template: str, first: Sequence[int],
                      progress: Progress | None = None) -> torch.Tensor:
        """Next-token probabilities of the `first` token ids after each prompt (see _next_token)."""
        ids = [self.encode(q, template) for q in queries]
        return self._next_token(ids, lambda lg: torch.softmax(torch.from_numpy(lg).double(), -1)[list(first)].float(),
                                len(first), progress)

    def next_token_logprobs(self, ids: list[list[int]], progress: Progress | None = None) -> torch.Tensor:
        """[n, V] float64 log-probabilities of the next token after each token sequence (the whole vocabulary)."""
        return self._next_token(ids, lambda lg: torch.log_softmax(torch.from_numpy(lg).double(), -1),
                                L.llama_vocab_n_tokens(self._vocab), progress, torch.float64)

    def _next_token(self, ids, row_of, width: int, progress, dtype=torch.float32) -> torch.Tensor:
        """row_of(next-token logits) for every sequence. Sequences sharing a long token prefix (MMLU's 5-shot
        prompts) decode it once and reuse its KV cells; the rest are batched prefills."""
        p0 = torch.empty(len(ids), width, dtype=dtype)

        def keep(i: int, logits: np.ndarray) -> None:
            p0[i] = row_of(logits)

        alone = []
        for P, members in prefix_groups(ids):
            if not P:
                alone += members
                continue
            suffixes = [ids[i][P:] for i in members]
            d = self._decoder(1, P + max(map(len, suffixes)))
            d.run_prefixed(ids[members[0]][:P], suffixes, lambda j, lg: keep(members[j], lg), progress)
        if alone:
            self._decoder(len(alone), max(len(ids[i]) for i in alone) + 1).run(
                [ids[i] for i in alone], 0, None, progress, first_logits=lambda j, lg: keep(alone[j], lg))
        return p0

    @contextmanager
    def scaled(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True):
        """The layers scaled in the loaded model (nothing written: llama_inplace.py); where that cannot be done,
        a scaled GGUF copy swapped in from a temporary folder, which is always removed (and, if a kill left one
        behind, removed by the next run: the folder carries our PID)."""
        scaler = self._in_place_scaler()
        if scaler is not None:
            with scaler.scaled(layers, alpha, scale_o_proj):
                yield
            return
        tmp = temp_dir(Path(tempfile.gettempdir()), "safety-audit-scaled")
        original = self.model_ref
        try:
            path = Path(tmp) / original.path.name
            scale_gguf(original.path, path, layers, alpha, scale_o_proj)
            self._load(path)
            yield
        finally:
            self._load(original.path)
            shutil.rmtree(tmp, ignore_errors=True)

    def _in_place_scaler(self) -> InPlaceScaler | None:
        """On first use: reload the model writable, find its weight tensors with one short decode, and check
        they can be patched in place; None (and the model reloaded as before) when they cannot.
        SAFETY_AUDIT_GGUF_COPIES=1 keeps the copy-per-count path."""
        if self._inplace is None:
            self._inplace = False
            if os.environ.get("SAFETY_AUDIT_GGUF_COPIES") == "1":
                return None
            path = self.model_ref.path
            self._load(path, writable=True)
            self._capture = WeightCapture(_ggml)
            try:
                self._states_for(self.tokenize("Hello.", True))
            finally:
                capture, self._capture = self._capture, None
            self._inplace = InPlaceScaler.attach(_ggml, capture, read_gguf(path)) or False
            if not self._inplace:
                self._load(path)
        return self._inplace or None

    def prepare_scaling(self) -> None:
        self._in_place_scaler()  # the baseline then runs on the same kernels (no repacked buffers) as the counts

    @property
    def scales_in_place(self) -> bool:
        return bool(self._inplace)

    def check_scaling(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> None:
        check_gguf_scaling(self.model_ref.path, layers, alpha, scale_o_proj)

    def close(self) -> None:
        super().close()
        if getattr(self, "_gen", None):
            self._gen.close()
        self._gen = None
        if getattr(self, "_ctx", None):
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
