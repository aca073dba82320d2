"""Allocator settings for CPU training."""

from __future__ import annotations

import ctypes
import platform

from ..weights.layers import block_parameters


def keep_freed_memory() -> bool:
    """Have glibc serve big tensors from its heap and keep what is freed, instead of an mmap/munmap per
    tensor: otherwise every CPU training step page-faults its gradients and activations in afresh (SmolLM2,
    4 x 128 tokens: ~250k faults, 0.5-0.8 s of a 3.3 s step in the kernel). Costs a little peak memory
    (freed blocks stay resident). Linux/glibc only; returns whether it applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def parameter_counts(folder, layers: range | None) -> tuple[int, int]:
    """(all parameters, those of the chosen layers' linear maps) of the model in an HF folder, counted on the
    meta device: nothing is read but config.json, so it is cheap at any size (remote code stays off)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM  # heavy: only when a run is checked

    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in block_parameters(model, layers).values()) if layers else 0
    return total, block


def training_bytes(total: int, trainable: int, lora: bool) -> int:
    """The least memory an fp32 AdamW run holds, activations aside: 4 bytes per weight, and per trained
    parameter its gradient (4) and Adam's two moments (8). LoRA trains adapters only (small beside the base)."""
    return 4 * total + (0 if lora else 12 * trainable)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for a run: MemAvailable on the CPU, the free memory of the GPU; None when unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0]) if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
