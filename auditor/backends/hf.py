"""torch backend (transformers): HF model folders, and GGUF files loaded dequantized.

States come from forward hooks on the decoder layers (raw residual outputs; `output_hidden_states`
would give the final-normed state for the last layer). Prompts are sorted by length and batched with
RIGHT padding: under a causal mask the real tokens never see the pad tokens, so padding cannot change
a prompt's final-token state (up to GEMM blocking, ~1e-6). The base model is called without the
lm_head, which a scan does not need (28M of SmolLM2's 135M weights).
"""

from __future__ import annotations

import copy
import inspect
from typing import Sequence

import torch
from transformers import StoppingCriteria

from ..io.models import ModelRef
from ..io.prompts import wrap
from ..weights.layers import decoder_layers, text_config
from ..weights.scaling import check_scaling, scaled
from .base import Attention, Backend, Generated, Progress, Stop, prefix_groups
from .devices import resolve_device, resolve_dtype
from .hf_loading import load_causal_lm, quiet_transformers


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: ModelRef | None = None, threads: int | None = None, max_batch_tokens: int = 4096,
                 hf_model=None, tokenizer=None, trust_remote_code: bool = False, batch_size: int | None = None,
                 device: str = "auto", dtype: str = "auto", device_map: str | None = None):
        """Load `model` on `device` in `dtype` (devices.py), or wrap an in-memory `hf_model` + `tokenizer`
        where it is (tests, harden)."""
        quiet_transformers()
        if threads:
            torch.set_num_threads(threads)
        self.model_ref = model
        self.max_batch_tokens = max_batch_tokens
        self.batch_size = batch_size  # at most this many prompts per forward (None: as many as max_batch_tokens allow)
        if hf_model is None:
            target = resolve_device(device)
            self.dtype = resolve_dtype(dtype, target)
            hf_model, tokenizer = load_causal_lm(model, trust_remote_code, self.dtype, device_map)
            if device_map is None:
                hf_model.to(target)
        self.model = hf_model.eval()
        self.device = self.model.get_input_embeddings().weight.device  # where inputs go (the first shard if dispatched)
        self.dtype = self.model.get_input_embeddings().weight.dtype
        self.tokenizer = tokenizer
        self.layers = decoder_layers(self.model)
        self.n_layers = len(self.layers)
        self.hidden_size = int(text_config(self.model).hidden_size)
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def render_chat(self, query: str) -> str:
        if not self.chat_template:
            raise self.no_chat_template()
        return self.bounded_chat(query, lambda q: self.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True))

    def encode(self, query: str, template: str) -> list[int]:
        text = wrap(query, template, self.render_chat)
        # chat templates carry their own BOS; otherwise the tokenizer's default special tokens (paper)
        return self.tokenizer(text, add_special_tokens=template != "chat")["input_ids"]

    def _padded(self, seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask): right padding for states (causal: pads come after the real tokens),
        left padding for generation and KV-cache steps (every row ends at the last column)."""
        width = max(len(x) for x in seqs)
        input_ids = torch.full((len(seqs), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, x in enumerate(seqs):
            sl = slice(width - len(x), width) if left else slice(0, len(x))
            input_ids[r, sl] = torch.tensor(x)
            mask[r, sl] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _batches(self, lengths: list[int]):
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batch: list[int] = []
        for i in order:
            full = self.batch_size is not None and len(batch) >= self.batch_size
            if batch and (full or (len(batch) + 1) * lengths[i] > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def states_for_ids(self, ids: list[list[int]], progress: Progress | None = None,
                       last_normed: bool = False) -> torch.Tensor:
        K, n = self.n_layers, len(ids)
        out = torch.empty(K, n, self.hidden_size)
        last: torch.Tensor | None = None
        captured: dict[int, torch.Tensor] = {}

        def hook(k):
            def fn(_mod, _inp, output):
                h = output[0] if isinstance(output, (tuple, list)) else output
                captured[k] = h[torch.arange(h.shape[0], device=h.device), last.to(h.device)].float().cpu()
            return fn

        handles = [layer.register_forward_hook(hook(k)) for k, layer in enumerate(self.layers)]
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        try:
            for batch in self._batches([len(x) for x in ids]):
                input_ids, mask = self._padded([ids[i] for i in batch], left=False)
                last = mask.sum(1) - 1
                captured.clear()
                res = base(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=last_normed)
                if last_normed:  # HF's last hidden_states entry: the last layer after the final norm
                    h = res.hidden_states[-1]
                    captured[K - 1] = h[torch.arange(len(batch), device=h.device), last.to(h.device)].float().cpu()
                for k in range(K):
                    out[k, batch] = captured[k]
                if progress:
                    progress(len(batch))
        finally:
            for h in handles:
                h.remove()
        return out

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _pad_id(self) -> int:
        """Any id the embedding has (pads are masked). A tokenizer can name a pad token the model has no row
        for: transformers gives a Qwen2 tokenizer without one an added <|endoftext|> past the vocabulary."""
        rows = self.model.get_input_embeddings().num_embeddings
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None and 0 <= candidate < rows:
                return candidate
        return 0

    @torch.inference_mode()
    def complete(self, queries: Sequence[str], template: str, max_new_tokens: int = 16,
                 progress: Progress | None = None, stop: Stop | None = None) -> list[Generated]:
        """Greedy generation, batched with LEFT padding (generate derives positions from the mask); a row
        whose `stop(text)` holds is finished early (per-row stopping criteria)."""
        ids = [self.encode(q, template) for q in queries]
        out: list[Generated] = [Generated("", 0)] * len(ids)
        eos = self.tokenizer.eos_token_id
        for batch in self._batches([len(x) + max_new_tokens for x in ids]):
            input_ids, mask = self._padded([ids[i] for i in batch], left=True)
            width = input_ids.shape[1]
            criteria = [_StopRows(self.tokenizer, width, stop)] if stop else None
            gen = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self._pad_id(), top_p=None, top_k=None,
                                      temperature=None, stopping_criteria=criteria)
            for r, i in enumerate(batch):
                new = gen[r, width:].tolist()
                n = next((k for k, t in enumerate(new) if t == eos), len(new))
                text = self.tokenizer.decode(new[:n], skip_special_tokens=True)
                out[i] = Generated(text, n, bool(stop) and n < max_new_tokens and bool(stop(text)))
            if progress:
                progress(len(batch))
        return out

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        logits = head(h.to(head.weight.device)).float()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / softcap) * softcap if softcap else logits

    def opening_probs(self, queries: Sequence[str], template: str, first: Sequence[int],
                      progress: Progress | None = None) -> torch.Tensor:
        """Next-token probabilities of the `first` token ids after each prompt (see _next_token)."""
        ids = [self.encode(q, template) for q in queries]
        return self._next_token(ids, lambda h: torch.softmax(self._logits(h), -1)[:, list(first)].cpu(), len(first), progress)

    def next_token_logprobs(self, ids: list[list[int]], progress: Progress | None = None) -> torch.Tensor:
        """[n, V] float64 log-probabilities of the next token after each token sequence (the whole vocabulary)."""
        head = self.model.get_output_embeddings()
        return self._next_token(ids, lambda h: torch.log_softmax(self._logits(h).double(), -1).cpu(),
                                head.weight.shape[0], progress, torch.float64)

    @torch.inference_mode()
    def _next_token(self, ids, rows_of, width: int, progress, dtype=torch.float32) -> torch.Tensor:
        """rows_of(last hidden states) for every sequence; the lm_head runs on the last position only. Sequences
        sharing a long token prefix (MMLU's 5-shot prompts) run it once and continue from its KV cache, expanded
        over the batch; the rest are left-padded prefills."""
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        p0 = torch.empty(len(ids), width, dtype=dtype)
        for P, members in prefix_groups(ids):
            if P:
                self._prefixed(base, ids[members[0]][:P], members, [ids[i][P:] for i in members], rows_of, p0, progress)
                continue
            for chunk in self._batches([len(ids[i]) for i in members]):
                batch = [members[j] for j in chunk]
                input_ids, mask = self._padded([ids[i] for i in batch], left=True)
                pos = (mask.cumsum(1) - 1).clamp(min=0)
                out = base(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False)
                p0[batch] = rows_of(out.last_hidden_state[:, -1])
                if progress:
                    progress(len(batch))
        return p0

    def _prefixed(self, base, prefix, members, suffixes, probs, p0, progress) -> None:
        """Right-padded suffixes continue one prefix's cache (copied and repeated per batch row)."""
        out = base(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        cache, name = _kv_cache(base, out)
        P = len(prefix)
        for chunk in self._batches([P + len(x) for x in suffixes]):
            input_ids, mask = self._padded([suffixes[j] for j in chunk], left=False)
            rows = len(chunk)
            c = copy.deepcopy(cache)
            c.batch_repeat_interleave(rows)
            full = torch.cat([torch.ones(rows, P, dtype=mask.dtype, device=mask.device), mask], 1)
            pos = torch.arange(P, P + input_ids.shape[1], device=input_ids.device).expand(rows, -1)
            h = base(input_ids=input_ids, attention_mask=full, position_ids=pos, use_cache=True,
                     **{name: c}).last_hidden_state
            last = mask.sum(1) - 1
            p0[[members[j] for j in chunk]] = probs(h[torch.arange(rows, device=h.device), last])
            if progress:
                progress(rows)

    @torch.inference_mode()
    def final_token_attention(self, query: str, template: str) -> Attention:
        """One forward with eager attention (SDPA and flash kernels never form the weights), for this call
        only: the model's own implementation is restored afterwards."""
        text = wrap(query, template, self.render_chat)
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        enc = self.tokenizer(text, add_special_tokens=template != "chat", return_offsets_mapping=fast)
        ids = list(enc["input_ids"])
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            out = base(input_ids=torch.tensor([ids], device=self.device), output_attentions=True, use_cache=False)
        finally:
            self.model.set_attn_implementation(previous)
        weights = torch.stack([a[0, :, -1, :].float().cpu() for a in out.attentions])
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]] if fast else None
        return Attention(text, ids, offsets, weights)

    def scaled(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True):
        return scaled(self.model, layers, alpha, scale_o_proj)

    def check_scaling(self, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> None:
        check_scaling(self.model, layers, alpha, scale_o_proj)


class _StopRows(StoppingCriteria):
    """A transformers stopping criterion per row: a row is done once `stop` holds for its text so far
    (finished rows are then padded by generate and cost nothing more to decide)."""

    def __init__(self, tokenizer, width: int, stop: Stop):
        self.tokenizer, self.width, self.stop = tokenizer, width, stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([self.stop(t) for t in texts], dtype=torch.bool, device=input_ids.device)


def _kv_cache(base, out) -> tuple:
    """The key/value cache of a forward and the keyword that takes it back: transformers 5.24 renamed
    `past_key_values` to `cache` (the old name is removed in 5.40); the versions we support before it have no `cache`."""
    if "cache" in inspect.signature(base.forward).parameters:
        return out.cache, "cache"
    return out.past_key_values, "past_key_values"
