"""Scaling the weights of chosen decoder layers by α inside a GGUF file (docs/METHOD.md §1.2).

`scale_gguf(src, dst, layers, alpha)` writes a copy in which those layers' linear maps are scaled by
patching each quant block's fp16 scale (and min): every weight of a block is d·q (+ m), so scaling d (and
m) scales the block exactly up to fp16 rounding of the new scale. The source is never modified. The tensor
names are llama.cpp's for the same maps `weights.layers` selects in a torch model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from ..errors import AuditError
from ..io.files import atomic_write
from ..io.gguf_file import read_gguf
from .layers import check_range
from .scaling import check_alpha

# byte offsets of the fp16 fields (d, and dmin/m where the format has one) inside one quant block
BLOCK_SCALE_OFFSETS: dict[Q, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q5_0: (0,), Q.Q8_0: (0,),
    Q.Q4_1: (0, 2), Q.Q5_1: (0, 2),
    Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q2_K: (80, 82),
    Q.Q6_K: (208,), Q.Q3_K: (108,),
}
FLOAT_TYPES = {Q.F32: np.float32, Q.F16: np.float16}
SCALABLE = {*FLOAT_TYPES, Q.BF16, *BLOCK_SCALE_OFFSETS}
GGUF_LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv", "ffn_gate", "ffn_up", "ffn_down",
               "ffn_gate_up", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
GGUF_O_PROJ = ("attn_output",)


def gguf_targets(info, layers: Sequence[int], scale_o_proj: bool = True) -> list:
    skip = () if scale_o_proj else GGUF_O_PROJ
    names = [f"blk.{k}.{base}.weight" for k in layers for base in GGUF_LINEAR if base not in skip]
    return [info.tensors[n] for n in names if n in info.tensors]


def _bf16_as_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _scaled_values(mm: np.ndarray, t) -> np.ndarray:
    """The numbers scaling multiplies by α (`_fields`), as float32."""
    as_f32 = _bf16_as_f32 if t.type == Q.BF16 else (lambda f: f.astype(np.float32))
    return np.concatenate([as_f32(f).ravel() for f in _fields(mm[t.offset : t.offset + t.n_bytes], t.type)])


def _check_range(mm: np.ndarray, t, alpha: float, src: Path) -> None:
    """α times the largest finite value must still fit the stored type: fp16 tops out at 65504, so a large α
    on an F16 tensor (or on fp16 block scales) would write inf into the model. Checked before any copy."""
    values = _scaled_values(mm, t)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return
    top = float(np.abs(finite).max()) * alpha
    stored = "float16" if t.type not in (Q.F32, Q.BF16) else "float32"
    limit = float(np.finfo(np.float16 if stored == "float16" else np.float32).max)
    if top > limit:
        what = "weights" if t.type in FLOAT_TYPES or t.type == Q.BF16 else "fp16 block scales"
        raise AuditError(f"alpha {alpha:g} overflows the {what} of '{t.name}' (largest {top / alpha:.4g} x alpha > "
                         f"{stored} max {limit:.4g})", src)


def _fields(region: np.ndarray, qtype) -> list[np.ndarray]:
    """Views, into a tensor's bytes, of the numbers scaling multiplies: all weights of a float tensor (as
    their type), the fp16 scale (and min) of every block of a quantized one."""
    if qtype in FLOAT_TYPES:
        return [region.view(FLOAT_TYPES[qtype])]
    if qtype == Q.BF16:
        return [region.view(np.uint16)]
    blocks = region.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    return [blocks[:, off : off + 2].view(np.float16) for off in BLOCK_SCALE_OFFSETS[qtype]]


def scale_region(region: np.ndarray, qtype, alpha: float) -> list[np.ndarray]:
    """Scale one tensor's bytes (uint8, as stored in the file) in place by alpha; returns copies of the fields
    it changed, for `restore_region` (x·α/α is not x in floating point: restoring must not divide)."""
    fields = _fields(region, qtype)
    saved = [f.copy() for f in fields]
    for f in fields:
        if qtype == Q.BF16:
            bits = (_bf16_as_f32(f) * np.float32(alpha)).view(np.uint32)
            f[:] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        else:
            f[:] = (f.astype(np.float32) * np.float32(alpha)).astype(f.dtype)
    return saved


def restore_region(region: np.ndarray, qtype, saved: list[np.ndarray]) -> None:
    """Put back, bit for bit, what `scale_region` changed."""
    for f, old in zip(_fields(region, qtype), saved):
        f[:] = old


def _patch(mm: np.ndarray, t, alpha: float) -> None:
    scale_region(mm[t.offset : t.offset + t.n_bytes], t.type, alpha)


def check_gguf_targets(src: Path, targets: list, alpha: float) -> None:
    """Every target's type can be scaled, and α times its largest value fits that type: before any copy."""
    for t in targets:
        if t.type not in SCALABLE:
            raise AuditError(f"cannot scale tensor '{t.name}': quant type {t.type.name} is not supported", src)
    source = np.memmap(src, dtype=np.uint8, mode="r")
    try:
        for t in targets:
            _check_range(source, t, alpha, src)
    finally:
        del source


def check_gguf_scaling(src: str | os.PathLike, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> None:
    """What scale_gguf would refuse for these layers and α, without writing anything (locate checks its α on
    every layer up front, not after the baseline count)."""
    info = read_gguf(src)
    check_alpha(alpha)
    check_gguf_targets(Path(src), gguf_targets(info, layers, scale_o_proj), alpha)


def scale_gguf(src: str | os.PathLike, dst: str | os.PathLike, layers: Sequence[int], alpha: float,
               scale_o_proj: bool = True, force: bool = False) -> list[str]:
    """Write dst = src with the chosen layers' linear weights scaled by alpha; returns the tensor names."""
    src, dst = Path(src), Path(dst)
    info = read_gguf(src)
    if info.n_layers is None:
        raise AuditError("GGUF has no block_count for its architecture", src)
    layers = check_range(layers, info.n_layers)
    check_alpha(alpha)
    targets = gguf_targets(info, layers, scale_o_proj)
    if not targets:
        raise AuditError("no linear-map tensors found in the chosen layers", src)
    check_gguf_targets(src, targets, alpha)
    def write(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+")
        for t in targets:
            _patch(mm, t, alpha)
        mm.flush()
        del mm

    atomic_write(dst, write, force)
    return [t.name for t in targets]
