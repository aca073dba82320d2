"""Pair-cosine statistics of final-token states, per layer (docs/METHOD.md §1.1).

`pair_statistics(A, B)` takes A [K, n, d] (normal) and B [K, m, d] (malicious) and gives, per layer, the
exact mean cosine and mean angle over all pairs i<j within A, within B, and all pairs across A×B. The
compiled kernel (cpp/) does it tiled without building the pair matrix; the pure-torch path below runs the
same tiles and the same arithmetic so both give the same numbers.

Zero vectors: their inverse norm is defined as 0, so their cosine with anything is 0 (angle 90°).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops import compiled as _ext

ROWS, ROWS_WITHIN, COLS = 256, 64, 1024  # work-item shapes, as in cpp/pair_stats_cpu.cpp
FIELDS = ("cos_aa", "cos_bb", "cos_ab", "angle_aa", "angle_bb", "angle_ab")


@dataclass
class PairStatistics:
    """Per-layer means ([K] float64; angles in degrees) and optionally the pair cosines (float32)."""

    cos_aa: torch.Tensor
    cos_bb: torch.Tensor
    cos_ab: torch.Tensor
    angle_aa: torch.Tensor
    angle_bb: torch.Tensor
    angle_ab: torch.Tensor
    pairs_aa: torch.Tensor | None = None  # [K, n, n] cosines (symmetric; diagonal meaningless)
    pairs_bb: torch.Tensor | None = None  # [K, m, m]
    pairs_ab: torch.Tensor | None = None  # [K, n, m]
    path: str = "torch"


def _inverse_norms(X: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(X, dim=-1, dtype=torch.float64)
    return torch.where(norm > 0, norm.reciprocal(), torch.zeros_like(norm)).float()


def _torch_pair_stats(A: torch.Tensor, B: torch.Tensor, return_pairs: bool):
    """Reference implementation in torch (the fallback): the same work items and arithmetic as
    cpp/pair_stats_cpu.cpp — row blocks of ROWS (ROWS_WITHIN within a set) × column spans of COLS, counted pairs i<j within a set."""
    K, n, m = A.shape[0], A.shape[1], B.shape[1]
    invA, invB = _inverse_norms(A), _inverse_norms(B)
    means = torch.zeros(6, K, dtype=torch.float64)
    out = {}
    if return_pairs:
        out = {0: torch.empty(K, n, n), 1: torch.empty(K, m, m), 2: torch.empty(K, n, m)}
    blocks = ((0, A, A, invA, invA, True), (1, B, B, invB, invB, True), (2, A, B, invA, invB, False))
    for blk, R, C, iR, iC, within in blocks:
        rows, cols = R.shape[1], C.shape[1]
        for k in range(K):
            step = ROWS_WITHIN if within else ROWS
            for r0 in range(0, rows, step):
                for c0 in range(r0 if within else 0, cols, COLS):
                    r = R[k, r0 : r0 + step].float()
                    c = C[k, c0 : c0 + COLS].float()
                    t = (r @ c.T).mul_(iR[k, r0 : r0 + step, None]).mul_(iC[k, None, c0 : c0 + COLS]).clamp_(-1.0, 1.0)
                    gi = torch.arange(r0, r0 + t.shape[0])[:, None]
                    gj = torch.arange(c0, c0 + t.shape[1])[None, :]
                    counted = gj > gi if within else torch.ones_like(t, dtype=torch.bool)
                    if return_pairs:
                        o = out[blk][k]
                        o[r0 : r0 + t.shape[0], c0 : c0 + t.shape[1]] = torch.where(gj >= gi, t, o[r0 : r0 + t.shape[0], c0 : c0 + t.shape[1]]) if within else t
                        if within:
                            upper = gj >= gi
                            o.T[r0 : r0 + t.shape[0], c0 : c0 + t.shape[1]][upper] = t[upper]
                    means[blk, k] += t[counted].sum(dtype=torch.float64)
                    means[3 + blk, k] += t.acos_()[counted].sum(dtype=torch.float64)
    npairs = torch.tensor([n * (n - 1) / 2, m * (m - 1) / 2, n * m], dtype=torch.float64)
    means[:3] /= npairs[:, None]
    means[3:] *= (180.0 / math.pi) / npairs[:, None]
    return means, out.get(0), out.get(1), out.get(2)


def pair_statistics(A: torch.Tensor, B: torch.Tensor, return_pairs: bool = False, impl: str = "auto") -> PairStatistics:
    """Exact per-layer pair statistics; impl = auto (compiled if it loads) | compiled | torch."""
    if A.dim() == 2:
        A, B = A[None], B[None]
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[2]:
        raise ValueError(f"pair_statistics needs A [K,n,d] and B [K,m,d]; got {tuple(A.shape)} and {tuple(B.shape)}")
    if A.shape[1] < 2 or B.shape[1] < 2:
        raise ValueError("pair_statistics needs at least 2 vectors in each set")
    ops = _ext.ops() if impl in ("auto", "compiled") else None
    if impl == "compiled" and ops is None:
        raise RuntimeError("compiled core not available: " + str(_ext.status()["error"]))
    if ops is not None:
        means, paa, pbb, pab = ops.pair_stats(A, B, return_pairs)
        path = "compiled-cuda" if A.is_cuda else "compiled-cpu"
        means = means.cpu()
    else:
        means, paa, pbb, pab = _torch_pair_stats(A.cpu(), B.cpu(), return_pairs)
        path = "torch"
    pairs = (paa, pbb, pab) if return_pairs else (None, None, None)
    return PairStatistics(*means.unbind(0), *pairs, path=path)
