"""Options every model-running command shares (scan, locate, eval): which model, which backend, which
prompt template, how many threads and prompts at a time, and where a served model is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends import check_capabilities
from ..backends.devices import DTYPE_CHOICES, check_placement, resolve_device, resolve_dtype
from ..errors import AuditError
from ..io.config import setting
from ..io.models import ModelRef, remote_model, resolve_model


@dataclass
class ModelOptions:
    model: str | None = setting(None, "A .gguf file, an HF model folder, 'reference', or omitted: the bundled SmolLM2.")
    backend: str = setting("auto", "GGUF -> llama.cpp by default; HF folder -> torch; torch on a GGUF loads it dequantized; "
                                   "openai: a served model (--base-url).")
    template: str = setting("alpaca", "alpaca (the paper's) | chat (the model's own: use the one it was aligned with) | raw.")
    threads: int | None = setting(None, "CPU threads (default: all cores).")
    batch: int | None = setting(None, "Prompts in flight: sequences per decode (llama.cpp), per batch (torch), concurrent "
                                      "requests (openai); default automatic.")
    base_url: str | None = setting(None, "openai backend: the server's URL, e.g. http://127.0.0.1:8000/v1.")
    served_model: str | None = setting(None, "openai backend: the model name the server knows (default: MODEL).")
    api_key_env: str | None = setting(None, "openai backend: the environment variable that holds the API key.")
    allow_insecure_http: bool = setting(False, "Send an API key over plain http to a host other than this machine "
                                               "(refused by default: use https).")
    device: str = setting("auto", "torch backend: auto (CUDA when present) | cpu | cuda | cuda:N.")
    dtype: str = setting("auto", "torch backend: " + " | ".join(DTYPE_CHOICES) + " (auto: bf16 on a GPU or a CPU with "
                                 "native bf16 matmul, else float32; statistics stay fp32).")
    device_map: str | None = setting(None, "torch backend: auto = spread a model too large for one device (accelerate).")

    def backend_kwargs(self, backend: str) -> dict:
        """What `open_backend` passes on: placement only where it means something (torch)."""
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


def resolve_target(opts: ModelOptions, needs: tuple[str, ...]) -> ModelRef:
    """The model a command runs on: a file or folder, or a served model; the backend checked for what the
    command needs before anything is resolved or loaded."""
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
