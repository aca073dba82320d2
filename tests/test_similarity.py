"""pair_statistics against a float64 numpy reference, compiled and pure-torch paths alike."""

import numpy as np
import pytest
import torch

from auditor.ops import compiled as _ext
from auditor.core.similarity import pair_statistics

IMPLS = ["torch", pytest.param("compiled", marks=pytest.mark.skipif(not _ext.load(), reason="compiled core unavailable"))]


def reference(A, B):
    """float64: zero vectors have cosine 0 with everything (documented behaviour)."""
    out = {}
    A, B = A.double().numpy(), B.double().numpy()
    for key, X, Y, within in (("aa", A, A, True), ("bb", B, B, True), ("ab", A, B, False)):
        nx = np.linalg.norm(X, axis=-1, keepdims=True)
        ny = np.linalg.norm(Y, axis=-1, keepdims=True)
        Xn = np.divide(X, nx, out=np.zeros_like(X), where=nx > 0)
        Yn = np.divide(Y, ny, out=np.zeros_like(Y), where=ny > 0)
        C = np.clip(np.einsum("knd,kmd->knm", Xn, Yn), -1, 1)
        if within:
            iu = np.triu_indices(X.shape[1], 1)
            c = C[:, iu[0], iu[1]]
        else:
            c = C.reshape(C.shape[0], -1)
        out["cos_" + key] = c.mean(1)
        out["angle_" + key] = np.degrees(np.arccos(c)).mean(1)
    return out


def check(s, ref, cos_tol=2e-6, ang_tol=2e-3):
    for k, v in ref.items():
        tol = cos_tol if k.startswith("cos") else ang_tol
        np.testing.assert_allclose(getattr(s, k).numpy(), v, atol=tol, rtol=0, err_msg=k)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,n,m,d", [(1, 2, 2, 3), (3, 2, 7, 16), (2, 300, 260, 24), (4, 17, 2, 5)])
def test_random_shapes_match_float64_reference(impl, K, n, m, d):
    g = torch.Generator().manual_seed(K * 1000 + n + m + d)
    A = torch.randn(K, n, d, generator=g)
    B = torch.randn(K, m, d, generator=g) + 0.5
    check(pair_statistics(A, B, impl=impl), reference(A, B))


@pytest.mark.parametrize("impl", IMPLS)
def test_identical_opposite_and_zero_vectors(impl):
    v = torch.randn(1, 1, 8)
    A = torch.cat([v, v, v], 1)  # identical: cos 1, angle 0 (arccos at 1 must not go NaN)
    B = torch.cat([-v, v, torch.zeros(1, 1, 8)], 1)  # opposite and a zero vector
    s = pair_statistics(A, B, impl=impl)
    assert s.cos_aa.item() == pytest.approx(1.0, abs=1e-6)
    assert s.angle_aa.item() == pytest.approx(0.0, abs=0.05)  # fp32 cos of identical vectors: ~1 ulp from 1
    assert not any(torch.isnan(getattr(s, f)).any() for f in ("cos_aa", "cos_bb", "cos_ab", "angle_aa", "angle_bb", "angle_ab"))
    check(s, reference(A, B), ang_tol=0.05)
    # B pairs: (-v, v) -> 180°, (-v, 0) -> 90°, (v, 0) -> 90°
    assert s.angle_bb.item() == pytest.approx(120.0, abs=0.05)


@pytest.mark.parametrize("impl", IMPLS)
def test_massive_activation_dimension(impl):
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, 40, 64, generator=g)
    B = torch.randn(3, 30, 64, generator=g)
    A[..., 7] = 1000 * (1 + 0.05 * A[..., 7])
    B[..., 7] = 1000 * (1 + 0.05 * B[..., 7])  # like real LLM states: one dimension dominates
    ref = reference(A, B)
    assert ref["cos_aa"].min() > 0.99  # the regime where fp32 cancellation would show
    check(pair_statistics(A, B, impl=impl), ref, cos_tol=2e-6, ang_tol=5e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_inputs_accumulate_in_fp32(impl):
    g = torch.Generator().manual_seed(5)
    A, B = torch.randn(2, 50, 96, generator=g), torch.randn(2, 40, 96, generator=g)
    for dt in (torch.bfloat16, torch.float16):
        a, b = A.to(dt), B.to(dt)
        check(pair_statistics(a, b, impl=impl), reference(a.float(), b.float()), cos_tol=1e-5, ang_tol=5e-3)


@pytest.mark.skipif(not _ext.load(), reason="compiled core unavailable")
def test_compiled_and_torch_paths_agree_including_pair_values():
    g = torch.Generator().manual_seed(9)
    A, B = torch.randn(3, 280, 32, generator=g), torch.randn(3, 270, 32, generator=g)
    c = pair_statistics(A, B, return_pairs=True, impl="compiled")
    t = pair_statistics(A, B, return_pairs=True, impl="torch")
    assert c.path == "compiled-cpu" and t.path == "torch"
    for f in ("cos_aa", "cos_bb", "cos_ab", "angle_aa", "angle_bb", "angle_ab"):
        torch.testing.assert_close(getattr(c, f), getattr(t, f), atol=1e-9, rtol=1e-9)
    for f in ("pairs_aa", "pairs_bb", "pairs_ab"):
        torch.testing.assert_close(getattr(c, f), getattr(t, f), atol=1e-6, rtol=0)
    # pair matrices are complete and symmetric within a set
    torch.testing.assert_close(c.pairs_aa, c.pairs_aa.transpose(1, 2), atol=1e-6, rtol=0)
    direct = torch.nn.functional.cosine_similarity(A[:, :, None], B[:, None], dim=-1)
    torch.testing.assert_close(c.pairs_ab, direct, atol=1e-5, rtol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        pair_statistics(torch.randn(2, 5, 4), torch.randn(3, 5, 4))
    with pytest.raises(ValueError):
        pair_statistics(torch.randn(2, 1, 4), torch.randn(2, 5, 4))
