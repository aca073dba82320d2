"""CUDA kernels against the CPU results; runs wherever a CUDA build of torch and a GPU are present."""

import pytest
import torch

from auditor.ops import compiled as _ext

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch and a GPU")]


@pytest.fixture(scope="module", autouse=True)
def compiled_with_cuda():
    if not (_ext.load() and _ext.status()["cuda"]):
        pytest.fail("a CUDA torch is present but the CUDA kernels did not build: " + str(_ext.status()["error"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K,n,m,d", [(1, 2, 2, 3), (3, 70, 33, 100), (2, 300, 260, 4096)])
def test_pair_stats_cuda_matches_cpu(dtype, K, n, m, d):
    from auditor.core.similarity import pair_statistics

    g = torch.Generator().manual_seed(n + m)
    A, B = torch.randn(K, n, d, generator=g).to(dtype), torch.randn(K, m, d, generator=g).to(dtype)
    A[:, :, 0] += 50  # a dominant dimension, like real LLM states
    cpu = pair_statistics(A, B, return_pairs=True, impl="compiled")
    gpu = pair_statistics(A.cuda(), B.cuda(), return_pairs=True, impl="compiled")
    assert gpu.path == "compiled-cuda"
    for f in ("cos_aa", "cos_bb", "cos_ab"):
        torch.testing.assert_close(getattr(gpu, f), getattr(cpu, f), atol=1e-5, rtol=0)
    for f in ("angle_aa", "angle_bb", "angle_ab"):
        torch.testing.assert_close(getattr(gpu, f), getattr(cpu, f), atol=2e-3, rtol=0)
    for f in ("pairs_aa", "pairs_bb", "pairs_ab"):
        torch.testing.assert_close(getattr(gpu, f).cpu(), getattr(cpu, f), atol=1e-5, rtol=0)


@pytest.mark.parametrize("K,n,m,d", [(1, 6, 5, 3), (2, 300, 1100, 64)])
def test_bootstrap_sums_on_cuda_match_cpu(K, n, m, d):
    """Scan's bootstrap replicates run on the states' device (tiled torch GEMMs) and agree with the CPU op."""
    from auditor.core.bootstrap import scan_resamples as bootstrap_weights
    from auditor.core.gap import gap_stats
    from auditor.core.similarity import weighted_pair_sums

    g = torch.Generator().manual_seed(n)
    A, B = torch.randn(K, n, d, generator=g), torch.randn(K, m, d, generator=g) + 0.1
    wa, wb = bootstrap_weights(n, m, 20, seed=0)
    for angles in (False, True):
        cpu, gpu = weighted_pair_sums(A, B, wa, wb, angles), weighted_pair_sums(A.cuda(), B.cuda(), wa, wb, angles)
        for f in ("aa", "ab"):
            torch.testing.assert_close(gpu.mean(f), cpu.mean(f), atol=1e-4, rtol=0)
    torch.testing.assert_close(gap_stats(A.cuda(), B.cuda(), None, (wa, wb)).replicates,
                               gap_stats(A, B, None, (wa, wb)).replicates, atol=1e-3, rtol=0)


def test_zero_vector_on_cuda():
    from auditor.core.similarity import pair_statistics

    A = torch.randn(1, 3, 16)
    A[0, 1] = 0
    B = torch.randn(1, 2, 16)
    cpu = pair_statistics(A, B, impl="compiled")
    gpu = pair_statistics(A.cuda(), B.cuda(), impl="compiled")
    torch.testing.assert_close(gpu.angle_aa, cpu.angle_aa, atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_cuda_matches_cpu_and_restores(dtype):
    from auditor.weights.scaling import scale_

    g = torch.Generator().manual_seed(0)
    cpu = [torch.randn(s, generator=g).to(dtype) for s in ((3, 5), (70_001,), (257, 513))]
    gpu = [t.cuda() for t in cpu]
    assert scale_(gpu, 1.1) == "compiled"
    scale_(cpu, 1.1)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)
