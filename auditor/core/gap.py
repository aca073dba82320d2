"""The angle gap per layer: pair sampling, prompt-bootstrap confidence intervals, the initial range rule.

Bootstrap unit = prompts, not pairs (pairs sharing a prompt are not independent). A replicate draws
multinomial counts w over the normal and the malicious prompts and takes the pair means weighted by
w_i·w_j over pairs of distinct original prompts; one set of draws serves every model of a comparison,
so the differential gap (model − contrast) gets a paired CI.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch

from .similarity import PairStatistics


def pair_masks(n: int, m: int, pairs: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair-count masks for N-N, M-M (upper triangle) and N-M: all pairs, or `pairs` random ones each (paper)."""
    if pairs is None:
        return (torch.ones(n, n).triu(1), torch.ones(m, m).triu(1), torch.ones(n, m))
    g = torch.Generator().manual_seed(seed)

    def within(size: int) -> torch.Tensor:
        i = torch.randint(size, (pairs,), generator=g)
        j = (i + torch.randint(1, size, (pairs,), generator=g)) % size  # j != i, uniform
        mask = torch.zeros(size, size)
        mask.index_put_((torch.minimum(i, j), torch.maximum(i, j)), torch.ones(pairs), accumulate=True)
        return mask

    cross = torch.zeros(n, m)
    cross.index_put_((torch.randint(n, (pairs,), generator=g), torch.randint(m, (pairs,), generator=g)),
                     torch.ones(pairs), accumulate=True)
    return within(n), within(m), cross


PAPER_SEEDS = (10, 100, 1000)  # the authors' seeds for N-N, M-M, N-M draws


def paper_pair_masks(n: int, m: int, draws: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' pair draws (their save_all_pairs_cos_sim.py), as pair-count masks: for each type `draws`
    times, reseed Python's `random` with the type's seed (+1 per draw), then `random.sample` two distinct
    prompts of the pool (N-N, M-M) or one of each (N-M). Draws repeat across reseeds; the masks count them.
    Sampling indices draws the same positions as sampling the prompt list (sample depends only on its length)."""
    def within(size: int, seed: int) -> torch.Tensor:
        mask = torch.zeros(size, size)
        for d in range(draws):
            random.seed(seed + d)
            i, j = random.sample(range(size), 2)
            mask[min(i, j), max(i, j)] += 1
        return mask

    cross = torch.zeros(n, m)
    for d in range(draws):
        random.seed(PAPER_SEEDS[2] + d)
        i = random.sample(range(n), 1)[0]
        j = random.sample(range(m), 1)[0]
        cross[i, j] += 1
    return within(n, PAPER_SEEDS[0]), within(m, PAPER_SEEDS[1]), cross


def weighted_pair_mean(values: torch.Tensor, mask: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """[K, B]: Σ mask_ij w1_bi w2_bj v_kij / Σ mask_ij w1_bi w2_bj for values [K,n,m], w1 [B,n], w2 [B,m]."""
    v = values.double() * mask.double()
    num = torch.einsum("kij,bj->kib", v, w2.double())
    num = (num * w1.double().T[None]).sum(1)
    den = ((mask.double() @ w2.double().T) * w1.double().T).sum(0)
    return num / den


def degrees(cos: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)).double())


GAP_DEFINITIONS = {
    "mean-of-angles": "mean over N-M pairs of the pair angle minus the same over N-N pairs (degrees)",
    "angle-of-mean-cosine": "degrees(arccos(mean N-M cosine)) minus degrees(arccos(mean N-N cosine)): the paper's",
}


@dataclass
class GapStats:
    """Per-layer means ([K] float64, angles in degrees) for one model and its bootstrap gap replicates."""

    cos_nn: torch.Tensor
    cos_mm: torch.Tensor
    cos_nm: torch.Tensor
    angle_nn: torch.Tensor
    angle_mm: torch.Tensor
    angle_nm: torch.Tensor
    replicates: torch.Tensor  # [B, K] angle gap per bootstrap replicate (B may be 0), in `definition`
    definition: str = "mean-of-angles"

    @property
    def gap_mean_of_angles(self) -> torch.Tensor:
        return self.angle_nm - self.angle_nn

    @property
    def gap_angle_of_mean_cosine(self) -> torch.Tensor:
        return degrees(self.cos_nm) - degrees(self.cos_nn)

    @property
    def gap(self) -> torch.Tensor:
        return self.gap_mean_of_angles if self.definition == "mean-of-angles" else self.gap_angle_of_mean_cosine

    def ci95(self) -> tuple[torch.Tensor, torch.Tensor]:
        return percentile_ci(self.replicates, self.gap)


def percentile_ci(replicates: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if replicates.shape[0] < 2:
        return point.clone(), point.clone()
    q = torch.quantile(replicates.double(), torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    return q[0], q[1]


def bootstrap_weights(n: int, m: int, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wn = torch.multinomial(torch.ones(n), n * B, replacement=True, generator=g).view(B, n)
    wm = torch.multinomial(torch.ones(m), m * B, replacement=True, generator=g).view(B, m)
    count = lambda idx, size: torch.zeros(B, size).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
    return count(wn, n), count(wm, m)


def gap_stats(ps: PairStatistics, masks, weights: tuple[torch.Tensor, torch.Tensor] | None, exact: bool,
              definition: str = "mean-of-angles") -> GapStats:
    """Means (the kernel's exact ones, or the sampled-pair ones) plus bootstrap replicates of the gap."""
    mask_nn, mask_mm, mask_nm = masks
    if exact:
        means = [ps.cos_aa, ps.cos_bb, ps.cos_ab, ps.angle_aa, ps.angle_bb, ps.angle_ab]
    else:
        one_n, one_m = torch.ones(1, mask_nn.shape[0]), torch.ones(1, mask_mm.shape[0])
        cos = [(ps.pairs_aa, mask_nn, one_n, one_n), (ps.pairs_bb, mask_mm, one_m, one_m), (ps.pairs_ab, mask_nm, one_n, one_m)]
        means = [weighted_pair_mean(v, mk, a, b)[:, 0] for v, mk, a, b in cos]
        means += [weighted_pair_mean(degrees(v), mk, a, b)[:, 0] for v, mk, a, b in cos]
    K = means[0].shape[0]
    reps = torch.zeros(0, K, dtype=torch.float64)
    if weights is not None and weights[0].shape[0] > 0:
        wn, wm = weights
        if definition == "mean-of-angles":
            reps = (weighted_pair_mean(degrees(ps.pairs_ab), mask_nm, wn, wm)
                    - weighted_pair_mean(degrees(ps.pairs_aa), mask_nn, wn, wn)).T
        else:
            reps = (degrees(weighted_pair_mean(ps.pairs_ab, mask_nm, wn, wm))
                    - degrees(weighted_pair_mean(ps.pairs_aa, mask_nn, wn, wn))).T
    return GapStats(*[x.double() for x in means], replicates=reps, definition=definition)


@dataclass
class RangeRule:
    """The initial safety-layer range [i, j] (inclusive, 0-based), as documented in README §Range rule.

    baseline: mean gap b over the first `baseline_layers` layers (default max(2, round(K/8))), and the
    spread s of those layers; the band is b + max(min_gap_deg, noise_k·s). Decisions rest on the 95% CI,
    with hysteresis, so a layer within noise of the band cannot flip the range (a quantization rounding moved
    v0.1's range between backends): a range *starts* at a layer whose whole CI clears the band (lower end
    above it) and *continues* while the point estimate is above the band and the CI's lower end above b;
    i = the first layer (after the baseline) that starts `persist` such layers. j = the first layer ≥ i whose
    gap − b reaches `plateau` of the largest gap − b over layers ≥ i: where the growth levels off. No such
    run → no range (null). Without a bootstrap the CI is the point and the rule is the point rule.
    """

    baseline_layers: int | None = None
    min_gap_deg: float = 0.5
    noise_k: float = 3.0
    persist: int = 2
    plateau: float = 0.9

    def to_dict(self) -> dict:
        return asdict(self)


def initial_range(gap: torch.Tensor, ci_lo: torch.Tensor, rule: RangeRule = RangeRule()) -> tuple[list[int] | None, dict]:
    g = [float(x) for x in gap]
    lo = [float(x) for x in ci_lo]
    K = len(g)
    L0 = min(rule.baseline_layers or max(2, round(K / 8)), K - 1)
    base = g[:L0]
    b = sum(base) / len(base)
    s = math.sqrt(sum((x - b) ** 2 for x in base) / max(1, len(base) - 1))
    thr = max(rule.min_gap_deg, rule.noise_k * s)
    starts = [k >= L0 and lo[k] - b > thr for k in range(K)]  # the whole CI clears the band
    stays = [k >= L0 and g[k] - b > thr and lo[k] > b for k in range(K)]  # point above the band, CI above b
    details = {"baseline_layers": L0, "baseline_gap_deg": b, "baseline_sd_deg": s, "threshold_deg": thr,
               "decision": "start: CI lower end above the band; continue: point above the band and CI above b"}
    for i in range(L0, K):
        run = stays[i : i + rule.persist]
        if starts[i] and all(run) and (len(run) == rule.persist or i + len(run) == K):
            peak = max(g[i:]) - b
            j = next(k for k in range(i, K) if g[k] - b >= rule.plateau * peak)
            details["margins_deg"] = _margins(g, lo, b, thr, i, j, L0, rule.plateau * peak)
            return [i, j], details
    return None, details


def _margins(g, lo, b, thr, i, j, L0, level) -> dict:
    """How far each bound's decision is from flipping, in degrees: the start's CI lower end over the band
    (and the layer before it, under it), and the end's gap over the plateau level (the layer before, under)."""
    return {"start": lo[i] - b - thr, "before_start": lo[i - 1] - b - thr if i - 1 >= L0 else None,
            "end": g[j] - b - level, "before_end": g[j - 1] - b - level if j - 1 >= i else None}


def differential_range(diff: list[dict]) -> list[int] | None:
    """The layers alignment moved most: the contiguous run around the differential-gap peak whose 95% CI
    lies above 0 (aligned minus contrast model). A start for `locate` when the range rule finds no range
    (small aligned models separate late and weakly; the differential still shows where alignment acted)."""
    up = [d["ci95"][0] > 0 for d in diff]
    if not any(up):
        return None
    peak = max((k for k in range(len(diff)) if up[k]), key=lambda k: diff[k]["diff_gap_deg"])
    a = b = peak
    while a > 0 and up[a - 1]:
        a -= 1
    while b + 1 < len(diff) and up[b + 1]:
        b += 1
    return [a, b]
