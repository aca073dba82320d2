"""Bootstrap weighting, pair sampling and the initial-range rule."""

import itertools

import pytest
import torch

from auditor.core.bootstrap import percentile_ci
from auditor.core.bootstrap import scan_resamples as bootstrap_weights
from auditor.core.gap import (RangeRule, differential_range, gap_stats, initial_range, pair_sample, paper_pair_sample,
                              sampled_cosines, sampled_mean)
from auditor.core.similarity import pair_statistics, weighted_pair_sums
from auditor.ops import compiled as _ext

IMPLS = ["torch", pytest.param("compiled", marks=pytest.mark.skipif(not _ext.load(), reason="compiled core unavailable"))]


def _explicit_replicate(vals, w, within=True):
    """A replicate's mean the slow way: expand duplicated prompts, average over pairs of distinct originals."""
    draws = [i for i in range(len(w)) for _ in range(int(w[i]))]
    pairs = [(a, b) for a, b in itertools.combinations(draws, 2) if a != b]
    return torch.stack([torch.stack([vals[k, min(a, b), max(a, b)] for a, b in pairs]).double().mean() for k in range(vals.shape[0])])


def test_sampled_mean_equals_explicit_resample():
    g = torch.Generator().manual_seed(1)
    n = 6
    vals = torch.rand(2, n, n, generator=g)
    iu = torch.triu_indices(n, n, 1)
    pairs = (iu[0], iu[1], torch.ones(iu.shape[1], dtype=torch.float64))
    w = torch.tensor([[2.0, 0, 1, 1, 0, 2]])
    got = sampled_mean(vals[:, iu[0], iu[1]], pairs, w, w)[:, 0]
    torch.testing.assert_close(got, _explicit_replicate(vals, w[0]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,n,m,d", [(2, 6, 5, 4), (1, 70, 1100, 8), (3, 300, 40, 24)])
def test_weighted_pair_sums_equal_the_pair_matrix_reduction(impl, K, n, m, d):
    """Bootstrap sums from the tiled op equal the pair matrices weighted by hand (the v0.1 way, O(n^2) memory)."""
    g = torch.Generator().manual_seed(K * n)
    A, B = torch.randn(K, n, d, generator=g), torch.randn(K, m, d, generator=g) + 0.2
    A[0, 1] = 0  # a zero vector: cosine 0 with everything
    wa, wb = bootstrap_weights(n, m, 9, seed=5)
    ps = pair_statistics(A, B, return_pairs=True)
    upper = torch.ones(n, n).triu(1).double()
    for angles in (False, True):
        ws = weighted_pair_sums(A, B, wa, wb, angles=angles, impl=impl)
        for field, pairs, w2 in (("aa", ps.pairs_aa, wa), ("ab", ps.pairs_ab, wb)):
            mask = upper if field == "aa" else torch.ones(n, m).double()
            vals = torch.rad2deg(torch.acos(pairs.double().clamp(-1, 1))) if angles else pairs.double()
            want = torch.einsum("kij,ij,ri,rj->kr", vals, mask, wa.double(), w2.double())
            torch.testing.assert_close(getattr(ws, field), want, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(getattr(ws, "weight_" + field), torch.einsum("ij,ri,rj->r", mask, wa.double(), w2.double()))
        if n == 6 and not angles:  # one replicate checked against an explicit resample of the prompts
            torch.testing.assert_close(ws.mean("aa")[:, 0], _explicit_replicate(ps.pairs_aa, wa[0]), rtol=1e-5, atol=1e-6)


def test_weighted_pair_sums_are_reproducible_and_thread_safe():
    """Items reduce in a fixed order: the same run twice is bit-identical; 1 vs 2 threads differ only by
    float32 GEMM rounding (MKL picks other kernels), never by a lost or doubled tile."""
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, 700, 16, generator=g), torch.randn(2, 300, 16, generator=g)
    wa, wb = bootstrap_weights(700, 300, 5, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = weighted_pair_sums(A, B, wa, wb)
        torch.set_num_threads(2)
        two, again = weighted_pair_sums(A, B, wa, wb), weighted_pair_sums(A, B, wa, wb)
    finally:
        torch.set_num_threads(threads)
    for f in ("aa", "ab"):
        assert torch.equal(getattr(two, f), getattr(again, f))
        torch.testing.assert_close(one.mean(f), two.mean(f), rtol=1e-7, atol=1e-9)


def test_bootstrap_weights_are_multinomial_counts_and_seeded():
    wn, wm = bootstrap_weights(10, 7, 50, seed=3)
    assert wn.shape == (50, 10) and wm.shape == (50, 7)
    assert torch.all(wn.sum(1) == 10) and torch.all(wm.sum(1) == 7)
    wn2, _ = bootstrap_weights(10, 7, 50, seed=3)
    wn3, _ = bootstrap_weights(10, 7, 50, seed=4)
    assert torch.equal(wn, wn2) and not torch.equal(wn, wn3)


def test_pair_sample_is_sparse_and_never_pairs_a_prompt_with_itself():
    s = pair_sample(20, 15, 500, seed=0)
    for (i, j, c), rows, cols, within in ((s.nn, 20, 20, True), (s.mm, 15, 15, True), (s.nm, 20, 15, False)):
        assert c.sum() == 500 and torch.all(i < rows) and torch.all(j < cols)
        assert not within or torch.all(i < j)
    big = pair_sample(100_000, 100_000, 10, seed=0)  # no n x n mask: fine at any size
    assert big.nn[0].numel() <= 10
    paper = paper_pair_sample(30, 40, 500)
    assert paper.nn[2].sum() == 500 and torch.all(paper.nn[0] < paper.nn[1])


def test_gap_ci_covers_point_and_shrinks_with_more_prompts():
    g = torch.Generator().manual_seed(0)
    widths = []
    for n in (20, 120):
        A = torch.randn(2, n, 16, generator=g)
        B = torch.randn(2, n, 16, generator=g)
        A[1, :, 0] += 3.0  # layer 1: normal and malicious states cluster in different directions
        B[1, :, 1] += 3.0
        gs = gap_stats(A, B, None, bootstrap_weights(n, n, 400, 0))
        lo, hi = gs.ci95()
        assert torch.all(lo <= gs.gap + 0.3) and torch.all(gs.gap - 0.3 <= hi)
        widths.append(float((hi - lo)[1]))
        assert gs.gap[1] > gs.gap[0] + 5  # separated clusters open a clear gap
    assert widths[1] < widths[0]


@pytest.mark.parametrize("definition", ["mean-of-angles", "angle-of-mean-cosine"])
def test_sampled_means_and_replicates_converge_to_exact(definition):
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(3, 30, 8, generator=g), torch.randn(3, 25, 8, generator=g) + 0.3
    weights = bootstrap_weights(30, 25, 50, 1)
    exact = gap_stats(A, B, None, weights, definition)
    iu_n, iu_m = torch.triu_indices(30, 30, 1), torch.triu_indices(25, 25, 1)
    every = type(pair_sample(2, 2, 1, 0))(
        (iu_n[0], iu_n[1], torch.ones(iu_n.shape[1], dtype=torch.float64)),
        (iu_m[0], iu_m[1], torch.ones(iu_m.shape[1], dtype=torch.float64)),
        (torch.arange(30).repeat_interleave(25), torch.arange(25).repeat(30), torch.ones(750, dtype=torch.float64)))
    via_sample = gap_stats(A, B, every, weights, definition)  # every pair once: the same numbers
    torch.testing.assert_close(exact.gap, via_sample.gap, atol=1e-5, rtol=0)
    torch.testing.assert_close(exact.replicates, via_sample.replicates, atol=1e-4, rtol=0)
    sampled = gap_stats(A, B, pair_sample(30, 25, 20000, 0), None, definition)
    torch.testing.assert_close(sampled.gap, exact.gap, atol=0.5, rtol=0)


def test_sampled_cosines_match_pair_statistics():
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(2, 9, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    ps = pair_statistics(A, B, return_pairs=True)
    s = pair_sample(9, 7, 40, 0)
    torch.testing.assert_close(sampled_cosines(A, B, s.nm), ps.pairs_ab[:, s.nm[0], s.nm[1]], atol=1e-6, rtol=0)


def test_percentile_ci_without_replicates_is_the_point():
    p = torch.tensor([1.0, 2.0], dtype=torch.float64)
    lo, hi = percentile_ci(torch.zeros(0, 2), p)
    assert torch.equal(lo, p) and torch.equal(hi, p)


def _curve(values):
    g = torch.tensor(values, dtype=torch.float64)
    return g, g - 0.2


def test_range_rule_finds_rise_and_plateau():
    gap, lo = _curve([0.1, 0.0, 0.05, 0.0, 0.1, 0.3, 1.0, 2.0, 3.0, 4.0, 4.5, 4.6, 4.6, 4.5, 3.0, 2.0])
    rng, details = initial_range(gap, lo)
    assert rng == [6, 10]
    assert details["threshold_deg"] == pytest.approx(0.5)


def test_range_rule_null_when_flat_or_not_significant():
    assert initial_range(*_curve([0.0] * 20))[0] is None
    gap = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert initial_range(gap, gap - 3.0)[0] is None  # CIs reach below the baseline: not significant


def test_range_rule_needs_persistence_and_noise_threshold():
    spike = [0.0] * 6 + [3.0] + [0.0] * 6
    assert initial_range(*_curve(spike))[0] is None  # one open layer is noise (persist=2)
    noisy = [0.0, 2.0, -2.0, 1.0, 3.0, 3.2, 3.1, 3.0]
    rng, details = initial_range(*_curve(noisy), RangeRule(baseline_layers=4))
    assert details["threshold_deg"] > 3.0 and rng is None  # 3·sd of a noisy baseline
    assert initial_range(*_curve([0, 0, 0, 0, 0, 1, 2, 2]), RangeRule(baseline_layers=4))[0] == [5, 6]


def test_differential_range_is_the_significant_run_around_the_peak():
    def diff(values, lows):
        return [{"layer": k, "diff_gap_deg": v, "ci95": [lo, v + 1]} for k, (v, lo) in enumerate(zip(values, lows))]

    vals = [0.1, 0.2, 0.2, -0.5, 0.6, 0.9, 1.3, 0.5, -1.0]
    lows = [-0.1, 0.05, 0.1, -0.9, 0.2, 0.4, 0.8, 0.1, -1.5]
    assert differential_range(diff(vals, lows)) == [4, 7]  # the run holding the peak, not the earlier one
    assert differential_range(diff(vals, [-0.1] * 9)) is None  # nothing significant
    assert differential_range(diff([2.0, 0.1], [0.5, -0.2])) == [0, 0]
