"""Scaling the weights of chosen decoder layers by α (DESIGN §1.2), on torch models and GGUF files.

torch: `scaled(model, layers, alpha)` multiplies every linear map's weight in those layers (q, k, v, o,
gate, up, down, or fused qkv / gate_up; norms, embeddings and lm_head untouched) in place with one
multi-tensor call of the compiled core, and restores them exactly: x·α/α is not always x in floating
point, so the originals are kept (a copy of the scaled layers only) and copied back.

GGUF: `scale_gguf(src, dst, layers, alpha)` writes a copy in which those tensors are scaled by patching
each quant block's fp16 scale (and min): every weight of a block is d·q (+ m), so scaling d (and m)
scales the block exactly up to fp16 rounding of the new scale. The source is never modified.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from . import _ext
from .errors import AuditError
from .gguf_file import read_gguf
from .io import check_writable

# byte offsets of the fp16 fields (d, and dmin/m where the format has one) inside one quant block
BLOCK_SCALE_OFFSETS: dict[Q, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q5_0: (0,), Q.Q8_0: (0,),
    Q.Q4_1: (0, 2), Q.Q5_1: (0, 2),
    Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q2_K: (80, 82),
    Q.Q6_K: (208,), Q.Q3_K: (108,),
}
FLOAT_TYPES = {Q.F32: np.float32, Q.F16: np.float16}
GGUF_LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv", "ffn_gate", "ffn_up", "ffn_down",
               "ffn_gate_up", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
O_PROJ = {"torch": ("o_proj", "out_proj", "attn.c_proj", "attention.dense"), "gguf": ("attn_output",)}


def check_layers(layers: Iterable[int], n_layers: int, alpha: float) -> list[int]:
    layers = sorted(set(int(k) for k in layers))
    if not layers:
        raise AuditError("no layers to scale")
    bad = [k for k in layers if not 0 <= k < n_layers]
    if bad:
        raise AuditError(f"layer {bad[0]} is outside the model (layers 0..{n_layers - 1})")
    if not alpha > 0 or not np.isfinite(alpha):
        raise AuditError(f"alpha must be a positive number, got {alpha}")
    return layers


# -- torch ------------------------------------------------------------------------------------------
def scalable_parameters(model: torch.nn.Module, layers: Sequence[int], scale_o_proj: bool = True) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every linear map inside the chosen decoder layers."""
    from .backends.hf import decoder_layers

    blocks = decoder_layers(model)
    layers = check_layers(layers, len(blocks), 1.0)
    linear_types = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types += (Conv1D,)
    except ImportError:
        pass
    out = []
    for k in layers:
        for name, mod in blocks[k].named_modules():
            if isinstance(mod, linear_types):
                if not scale_o_proj and any(name.endswith(s) for s in O_PROJ["torch"]):
                    continue
                out.append((f"layers.{k}.{name}.weight", mod.weight))
    return out


def scale_(tensors: list[torch.Tensor], alpha: float) -> str:
    """In-place multi-tensor scaling; the compiled op when it can take the tensors, else torch's foreach."""
    ops = _ext.ops()
    on_cuda = any(t.is_cuda for t in tensors)
    with torch.no_grad():
        if ops is not None and all(t.is_contiguous() for t in tensors) and (not on_cuda or _ext.status()["cuda"]):
            ops.scale_(tensors, float(alpha))
            return "compiled"
        torch._foreach_mul_(tensors, float(alpha))
    return "torch"


@contextmanager
def scaled(model: torch.nn.Module, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> Iterator[list[str]]:
    """Scale the chosen layers' linear weights by alpha inside the block; bit-exact restore afterwards."""
    from .backends.hf import decoder_layers

    check_layers(layers, len(decoder_layers(model)), alpha)
    params = scalable_parameters(model, layers, scale_o_proj)
    tensors = [p.data for _, p in params]
    with torch.no_grad():
        originals = [t.clone() for t in tensors]
        scale_(tensors, alpha)
    try:
        yield [n for n, _ in params]
    finally:
        with torch.no_grad():
            torch._foreach_copy_(tensors, originals)


# -- GGUF -------------------------------------------------------------------------------------------
def gguf_targets(info, layers: Sequence[int], scale_o_proj: bool = True) -> list:
    skip = () if scale_o_proj else O_PROJ["gguf"]
    names = [f"blk.{k}.{base}.weight" for k in layers for base in GGUF_LINEAR if base not in skip]
    return [info.tensors[n] for n in names if n in info.tensors]


def _patch(mm: np.ndarray, t, alpha: float) -> None:
    region = mm[t.offset : t.offset + t.n_bytes]
    if t.type in FLOAT_TYPES:
        w = region.view(FLOAT_TYPES[t.type])
        w[:] = (w.astype(np.float32) * np.float32(alpha)).astype(w.dtype)
        return
    if t.type == Q.BF16:
        w = region.view(np.uint16)
        f = (w.astype(np.uint32) << 16).view(np.float32) * np.float32(alpha)
        bits = f.view(np.uint32)
        w[:] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        return
    offsets = BLOCK_SCALE_OFFSETS.get(t.type)
    if offsets is None:
        raise AuditError(f"cannot scale tensor '{t.name}': quant type {t.type.name} is not supported")
    block_bytes = GGML_QUANT_SIZES[t.type][1]
    blocks = region.reshape(-1, block_bytes)
    for off in offsets:
        d = blocks[:, off : off + 2].view(np.float16)
        new = d.astype(np.float32) * np.float32(alpha)
        if not np.all(np.isfinite(new.astype(np.float16))):
            raise AuditError(f"alpha {alpha} overflows the fp16 block scales of '{t.name}'")
        d[:] = new.astype(np.float16)


def scale_gguf(src: str | os.PathLike, dst: str | os.PathLike, layers: Sequence[int], alpha: float,
               scale_o_proj: bool = True, force: bool = False) -> list[str]:
    """Write dst = src with the chosen layers' linear weights scaled by alpha; returns the tensor names."""
    src, dst = Path(src), Path(dst)
    info = read_gguf(src)
    if info.n_layers is None:
        raise AuditError("GGUF has no block_count for its architecture", src)
    layers = check_layers(layers, info.n_layers, alpha)
    targets = gguf_targets(info, layers, scale_o_proj)
    if not targets:
        raise AuditError("no linear-map tensors found in the chosen layers", src)
    for t in targets:  # fail before writing anything
        if t.type not in FLOAT_TYPES and t.type != Q.BF16 and t.type not in BLOCK_SCALE_OFFSETS:
            raise AuditError(f"cannot scale tensor '{t.name}': quant type {t.type.name} is not supported", src)
    check_writable(dst, force)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+")
        for t in targets:
            _patch(mm, t, alpha)
        mm.flush()
        del mm
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return [t.name for t in targets]
