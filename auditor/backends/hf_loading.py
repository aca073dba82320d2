"""Loading transformers models offline: quiet logs, GGUF -> safetensors conversion (cached by content),
and the one place that calls `from_pretrained` (safetensors only, `trust_remote_code` off by default).
Shared by the torch backend and training."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import torch

from ..errors import AuditError
from ..io.cache import cache_dir, content_hash
from ..io.files import temp_dir
from ..io.models import ModelRef


def quiet_transformers() -> None:
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"  # transformers' own bars (dequantizing, writing shards); the CLI shows rich ones
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def converted_gguf_dir(path: Path) -> Path:
    """Dequantize a GGUF once with transformers and cache it as safetensors (12 s -> 0.3 s next time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    out = cache_dir() / "converted" / f"{path.stem}-{content_hash(path)[:24]}"
    if (out / "config.json").is_file():
        return out
    try:  # transformers draws a tqdm bar of its own here, which floods logs: its stderr goes nowhere
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise AuditError(f"transformers cannot load this GGUF ({str(e).splitlines()[0][:120]})", path) from None
    model.config.quantization_config = None  # save_pretrained refuses "quantized with gguf" models
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.hf_quantizer = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, out.name)  # a killed conversion's copy is removed by the next one
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def torch_folder(ref: ModelRef) -> Path:
    """The HF folder transformers loads for a model: its own, its safetensors twin, or a converted GGUF."""
    if ref.hf_dir is not None:
        return ref.hf_dir
    return converted_gguf_dir(ref.path) if ref.is_gguf else ref.path


def load_causal_lm(ref: ModelRef, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                   device_map: str | None = None):
    """(model in `dtype`, eval mode; tokenizer with a pad token) for a resolved model; `device_map="auto"`
    dispatches it over the visible devices with accelerate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    folder = torch_folder(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code, device_map=device_map)
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as e:
        raise AuditError(f"transformers cannot load this model ({str(e).splitlines()[0][:160]})", ref.path) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok
