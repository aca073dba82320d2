"""Options every model-running command shares (scan, locate, eval, attention, audit), and the `Target` a run
resolves from them once: which model, which backend, its content hash, its precision, its loaded backend.

Why one object: a command used to choose its backend three times, hash the model twice and check placement in
two places; each step now happens once, here, and every later step reads the answer from the Target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..backends import Backend, REGISTRY, check_capabilities, choose_backend
from ..backends.devices import DTYPE_CHOICES, check_placement, resolve_device, resolve_dtype
from ..backends.hf_loading import torch_folder
from ..errors import AuditError
from ..io.config import setting
from ..io.models import ModelRef, remote_model, resolve_model
from ..io.reports import ReportHeader
from ..training.memory import available_bytes, parameter_counts


@dataclass
class ModelOptions:
    model: str | None = setting(None, "A .gguf file, an HF model folder, 'reference', or omitted: the bundled SmolLM2.",
                                cli=False)
    backend: str = setting("auto", "GGUF -> llama.cpp by default; HF folder -> torch; torch on a GGUF loads it dequantized; "
                                   "openai: a served model (--base-url).", choices="backends")
    template: str = setting("alpaca", "alpaca (the paper's) | chat (the model's own: use the one it was aligned with) | raw.",
                            choices="templates")
    threads: int | None = setting(None, "CPU threads (default: all cores).", least=1)
    batch: int | None = setting(None, "Prompts in flight: sequences per decode (llama.cpp), per batch (torch), concurrent "
                                      "requests (openai); default automatic.", least=1)
    base_url: str | None = setting(None, "openai backend: the server's URL, e.g. http://127.0.0.1:8000/v1.", metavar="URL")
    served_model: str | None = setting(None, "openai backend: the model name the server knows (default: MODEL).",
                                       flag="--model", metavar="NAME")
    api_key_env: str | None = setting(None, "openai backend: the environment variable that holds the API key.",
                                      metavar="VAR")
    allow_insecure_http: bool = setting(False, "Send an API key over plain http to a host other than this machine "
                                               "(refused by default: use https).")
    device: str = setting("auto", "torch backend: auto (CUDA when present) | cpu | cuda | cuda:N.",
                          metavar="auto|cpu|cuda[:N]")
    dtype: str = setting("auto", "torch backend: " + " | ".join(DTYPE_CHOICES) + " (auto: bf16 on a GPU or a CPU with "
                                 "native bf16 matmul, else float32; statistics stay fp32).", choices="dtypes")
    device_map: str | None = setting(None, "torch backend: auto = spread a model too large for one device (accelerate).",
                                     choices=("auto",))

    def backend_kwargs(self, backend: str) -> dict:
        """What a backend's constructor takes: placement only where it means something (torch)."""
        kw = {"threads": self.threads, "batch_size": self.batch}
        if backend == "torch":
            kw |= {"device": self.device, "dtype": self.dtype, "device_map": self.device_map}
        return kw

    def precision_key(self, backend: str) -> list[str]:
        """For cache and journal keys: how torch will compute when it is not float32 on the CPU: a lower precision
        (auto means bf16 on some machines of this kind, fp32 on others), a GPU (its kernels round differently, so
        greedy verdicts can differ) or a device map. Empty for float32 on the CPU, so those keys stay as they were."""
        if backend != "torch":
            return []
        device = resolve_device(self.device)
        dtype = str(resolve_dtype(self.dtype, device)).removeprefix("torch.")
        key = [] if dtype == "float32" else [dtype]
        if device != "cpu":
            key.append(f"cuda:{torch.cuda.get_device_name(device)}")
        return key + ([f"device_map={self.device_map}"] if self.device_map else [])


def _resolve_model(opts: ModelOptions, needs: tuple[str, ...]) -> ModelRef:
    """The model a command runs on: a file or folder, or a served model; the backend checked for what the
    command needs and the placement for the backend, before anything is resolved or loaded."""
    if opts.backend != "auto":
        check_capabilities(opts.backend, needs)
    placed = (opts.device, opts.dtype, opts.device_map) != ("auto", "auto", None)
    if placed:
        if opts.backend not in ("torch", "auto"):
            raise AuditError(f"--device, --dtype and --device-map are for the torch backend, not {opts.backend}")
        check_placement(opts.device, opts.dtype, opts.device_map)
    if opts.backend == "openai":
        return remote_model(opts.base_url, opts.served_model or opts.model, opts.api_key_env, opts.allow_insecure_http)
    if opts.base_url or opts.served_model or opts.api_key_env:
        raise AuditError("--base-url, --model and --api-key-env go with --backend openai")
    model = resolve_model(opts.model)
    if placed and opts.backend == "auto" and not model.kind == "hf":
        raise AuditError("--device, --dtype and --device-map are for the torch backend: add --backend torch", model.path)
    return model


@dataclass
class Target:
    """A model resolved once for a run: the reference, the backend chosen for what the run needs, and (computed
    on first use, then kept) its content hash, its precision key and its loaded backend. Use as a context
    manager, or call `close()`: the backend is freed exactly once."""

    ref: ModelRef
    backend_name: str
    opts: ModelOptions
    _backend: Backend | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, opts: ModelOptions, needs: tuple[str, ...]) -> Target:
        ref = _resolve_model(opts, needs)
        return cls(ref, choose_backend(ref, opts.backend, needs), opts)

    @classmethod
    def of(cls, ref: ModelRef, opts: ModelOptions, needs: tuple[str, ...], backend: str = "auto") -> Target:
        """A second model beside the run's own (a scan's contrast, eval's KL base), placed like it."""
        return cls(ref, choose_backend(ref, backend, needs), opts)

    @property
    def label(self) -> str:
        return self.ref.label

    @cached_property
    def sha256(self) -> str | None:
        """SHA-256 of exactly what the backend reads (None for a served model)."""
        return self.ref.content_hash(self.backend_name)

    @cached_property
    def precision(self) -> list[str]:
        return self.opts.precision_key(self.backend_name)

    def check_fits(self) -> None:
        """A torch model whose weights alone exceed the memory free on its device is refused before the load, in
        one line with what would fit (parameters counted on the meta device from config.json). A device map
        spreads it, and llama.cpp maps its file: neither is checked."""
        if self.backend_name != "torch" or self.opts.device_map:
            return
        device = resolve_device(self.opts.device)
        dtype = resolve_dtype(self.opts.dtype, device)
        total, _ = parameter_counts(torch_folder(self.ref), None)
        need, free = total * dtype.itemsize, available_bytes(device)
        if free is not None and need > free:
            raise AuditError(f"this model's {total / 1e9:.2f}B parameters need {need / 1e9:.1f} GB in "
                             f"{str(dtype).removeprefix('torch.')} on the {device}, and {free / 1e9:.1f} GB is free: use "
                             f"its GGUF with --backend llama, --dtype bfloat16, a GPU or --device-map auto", self.ref.path)

    def backend(self, reporter=None) -> Backend:
        """The loaded backend, loaded on the first call."""
        if self._backend is None:
            self.check_fits()
            if reporter is not None:
                reporter.status(f"loading {self.label} ({self.backend_name} backend)")
            self._backend = REGISTRY[self.backend_name].load_class()(self.ref, **self.opts.backend_kwargs(self.backend_name))
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def header(self, command: str) -> ReportHeader:
        return ReportHeader(command, self.label, self.sha256, self.backend_name)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
