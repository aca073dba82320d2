"""Scaling the weights of chosen decoder layers by α inside a torch model (docs/METHOD.md §1.2).

`scaled(model, layers, alpha)` multiplies the weight of every linear map `weights.layers` selects in those
layers in place, with one multi-tensor call of the compiled core, and restores them exactly: x·α/α is not
always x in floating point, so the originals are kept (a copy of the scaled layers only) and copied back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import AuditError
from ..ops import compiled
from .layers import check_range, decoder_layers, linear_maps


def check_alpha(alpha: float) -> float:
    if not alpha > 0 or not np.isfinite(alpha):
        raise AuditError(f"alpha must be a positive number, got {alpha}")
    return float(alpha)


def scalable_parameters(model: torch.nn.Module, layers: Sequence[int], scale_o_proj: bool = True) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every linear map the selector finds in the chosen decoder layers."""
    return [(f"{m.name}.weight", m.weight) for m in linear_maps(model, layers) if scale_o_proj or not m.is_o_proj]


def scale_(tensors: list[torch.Tensor], alpha: float) -> str:
    """In-place multi-tensor scaling; the compiled op when it can take the tensors, else torch's foreach."""
    ops = compiled.ops()
    on_cuda = any(t.is_cuda for t in tensors)
    with torch.no_grad():
        if ops is not None and all(t.is_contiguous() for t in tensors) and (not on_cuda or compiled.status()["cuda"]):
            ops.scale_(tensors, float(alpha))
            return "compiled"
        torch._foreach_mul_(tensors, float(alpha))
    return "torch"


def check_scaling(model: torch.nn.Module, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> None:
    """α times the largest weight must fit the weights' dtype (bf16/fp16 models overflow first): a scaled
    model full of inf would count as a model that refuses nothing. Checked before any weight changes."""
    check_alpha(alpha)
    for name, p in scalable_parameters(model, layers, scale_o_proj):
        top = float(p.detach().abs().max()) * alpha
        limit = float(torch.finfo(p.dtype).max)
        if top > limit:
            raise AuditError(f"alpha {alpha:g} overflows the weights of '{name}' (largest {top / alpha:.4g} x alpha > "
                             f"{str(p.dtype).removeprefix('torch.')} max {limit:.4g})")


@contextmanager
def scaled(model: torch.nn.Module, layers: Sequence[int], alpha: float, scale_o_proj: bool = True) -> Iterator[list[str]]:
    """Scale the chosen layers' linear weights by alpha inside the block; bit-exact restore afterwards."""
    check_range(layers, len(decoder_layers(model)))
    check_scaling(model, layers, alpha, scale_o_proj)
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
