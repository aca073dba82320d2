"""Bootstrap weighting, pair sampling and the initial-range rule."""

import itertools

import pytest
import torch

from auditor.core.gap import (RangeRule, bootstrap_weights, differential_range, gap_stats, initial_range, pair_masks,
                              percentile_ci, weighted_pair_mean)
from auditor.core.similarity import pair_statistics


def test_weighted_pair_mean_equals_explicit_resample():
    """A replicate's weighted mean = the plain mean over pairs of distinct original prompts, duplicates expanded."""
    g = torch.Generator().manual_seed(1)
    n = 6
    vals = torch.rand(2, n, n, generator=g)
    vals = (vals + vals.transpose(1, 2)) / 2
    w = torch.tensor([[2.0, 0, 1, 1, 0, 2]])
    got = weighted_pair_mean(vals, torch.ones(n, n).triu(1), w, w)[:, 0]
    draws = [i for i in range(n) for _ in range(int(w[0, i]))]
    pairs = [(a, b) for a, b in itertools.combinations(draws, 2) if a != b]
    want = torch.stack([torch.stack([vals[k, a, b] for a, b in pairs]).double().mean() for k in range(2)])
    torch.testing.assert_close(got, want)


def test_bootstrap_weights_are_multinomial_counts_and_seeded():
    wn, wm = bootstrap_weights(10, 7, 50, seed=3)
    assert wn.shape == (50, 10) and wm.shape == (50, 7)
    assert torch.all(wn.sum(1) == 10) and torch.all(wm.sum(1) == 7)
    wn2, _ = bootstrap_weights(10, 7, 50, seed=3)
    wn3, _ = bootstrap_weights(10, 7, 50, seed=4)
    assert torch.equal(wn, wn2) and not torch.equal(wn, wn3)


def test_sampled_pairs_masks():
    nn, mm, nm = pair_masks(20, 15, 500, seed=0)
    assert nn.sum() == 500 and mm.sum() == 500 and nm.sum() == 500
    assert torch.all(nn.tril() == 0) and torch.all(mm.tril() == 0)  # i < j only, never i == j
    full = pair_masks(4, 3, None, 0)
    assert full[0].sum() == 6 and full[1].sum() == 3 and full[2].sum() == 12


def test_gap_ci_covers_point_and_shrinks_with_more_prompts():
    g = torch.Generator().manual_seed(0)
    widths = []
    for n in (20, 120):
        A = torch.randn(2, n, 16, generator=g)
        B = torch.randn(2, n, 16, generator=g)
        A[1, :, 0] += 3.0  # layer 1: normal and malicious states cluster in different directions
        B[1, :, 1] += 3.0
        ps = pair_statistics(A, B, return_pairs=True)
        gs = gap_stats(ps, pair_masks(n, n, None, 0), bootstrap_weights(n, n, 400, 0), exact=True)
        lo, hi = gs.ci95()
        assert torch.all(lo <= gs.gap + 0.3) and torch.all(gs.gap - 0.3 <= hi)
        widths.append(float((hi - lo)[1]))
        assert gs.gap[1] > gs.gap[0] + 5  # separated clusters open a clear gap
    assert widths[1] < widths[0]


def test_sampled_means_converge_to_exact():
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(3, 30, 8, generator=g), torch.randn(3, 25, 8, generator=g) + 0.3
    ps = pair_statistics(A, B, return_pairs=True)
    exact = gap_stats(ps, pair_masks(30, 25, None, 0), None, exact=True)
    via_masks = gap_stats(ps, pair_masks(30, 25, None, 0), None, exact=False)
    torch.testing.assert_close(exact.gap, via_masks.gap, atol=1e-5, rtol=0)
    sampled = gap_stats(ps, pair_masks(30, 25, 20000, 0), None, exact=False)
    torch.testing.assert_close(sampled.gap, exact.gap, atol=0.5, rtol=0)


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
