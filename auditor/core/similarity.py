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


def inverse_norms(X: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(X, dim=-1, dtype=torch.float64)
    return torch.where(norm > 0, norm.reciprocal(), torch.zeros_like(norm)).float()


def _torch_pair_stats(A: torch.Tensor, B: torch.Tensor, return_pairs: bool):
    """Reference implementation in torch (the fallback): the same work items and arithmetic as
    cpp/pair_stats_cpu.cpp — row blocks of ROWS (ROWS_WITHIN within a set) × column spans of COLS, counted pairs i<j within a set."""
    K, n, m = A.shape[0], A.shape[1], B.shape[1]
    invA, invB = inverse_norms(A), inverse_norms(B)
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


def _torch_pair_weighted(A: torch.Tensor, B: torch.Tensor, Wa: torch.Tensor, Wb: torch.Tensor, angles: bool) -> torch.Tensor:
    """Reference for cpp's pair_weighted (same tiles, same arithmetic), on A's device: [2, K, R] float64."""
    K, n, R = A.shape[0], A.shape[1], Wa.shape[0]
    invA, invB = inverse_norms(A), inverse_norms(B)
    Wa, Wb = Wa.float().to(A.device), Wb.float().to(A.device)
    out = torch.zeros(2, K, R, dtype=torch.float64, device=A.device)
    for slot, C, iC, Wc, within in ((0, A, invA, Wa, True), (1, B, invB, Wb, False)):
        step = ROWS_WITHIN if within else ROWS
        for k, r0 in ((k, r0) for k in range(K) for r0 in range(0, n, step)):
            for c0 in range(r0 if within else 0, C.shape[1], COLS):
                r, c = A[k, r0 : r0 + step].float(), C[k, c0 : c0 + COLS].float()
                t = (r @ c.T).mul_(invA[k, r0 : r0 + step, None]).mul_(iC[k, None, c0 : c0 + COLS]).clamp_(-1.0, 1.0)
                if angles:
                    t.acos_()
                if within:
                    ar = lambda a, size: torch.arange(a, a + size, device=t.device)
                    t = t.where(ar(c0, t.shape[1])[None] > ar(r0, t.shape[0])[:, None], 0.0)
                s = (Wa[:, r0 : r0 + t.shape[0]] @ t).double() * Wc[:, c0 : c0 + t.shape[1]].double()
                out[slot, k] += s.sum(1) * (180.0 / math.pi if angles else 1.0)
    return out


@dataclass
class WeightedPairSums:
    """Per layer k and replicate r, Σ w_ri w_rj f(cos_ij) over the counted pairs (i<j within the normal set;
    all normal × malicious pairs), f = cosine or angle in degrees; and Σ w_ri w_rj over the same pairs."""

    aa: torch.Tensor  # [K, R] float64
    ab: torch.Tensor
    weight_aa: torch.Tensor  # [R]
    weight_ab: torch.Tensor
    angles: bool

    def mean(self, field: str) -> torch.Tensor:
        """[K, R] weighted pair mean over the `field` pairs ("aa" or "ab")."""
        return getattr(self, field) / getattr(self, "weight_" + field)[None]


def weighted_pair_sums(A: torch.Tensor, B: torch.Tensor, Wa: torch.Tensor, Wb: torch.Tensor, angles: bool = True,
                       impl: str = "auto") -> WeightedPairSums:
    """Bootstrap replicates' weighted pair sums without materialising any pair matrix (memory O(tile) in n, m).
    Wa [R, n], Wb [R, m]: per-replicate prompt weights (multinomial counts); angles: f = angle (else cosine)."""
    if A.dim() == 2:
        A, B = A[None], B[None]
    ops = _ext.ops() if impl in ("auto", "compiled") and not A.is_cuda else None
    if impl == "compiled" and ops is None:
        raise RuntimeError("compiled pair_weighted runs on CPU tensors only" if A.is_cuda else
                           "compiled core not available: " + str(_ext.status()["error"]))
    sums = ops.pair_weighted(A, B, Wa, Wb, angles) if ops is not None else _torch_pair_weighted(A, B, Wa, Wb, angles)
    wa, wb = Wa.double().cpu(), Wb.double().cpu()
    within = (wa.sum(1) ** 2 - (wa ** 2).sum(1)) / 2  # Σ_{i<j} w_i w_j
    return WeightedPairSums(*sums.cpu().unbind(0), weight_aa=within, weight_ab=wa.sum(1) * wb.sum(1), angles=angles)
