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

from .bootstrap import percentile_ci
from .similarity import inverse_norms, pair_statistics, weighted_pair_sums


Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (first index, second index, count) of sampled pairs


@dataclass
class PairSample:
    """Sampled pairs of each type, sparse (memory O(pairs) whatever the prompt counts)."""

    nn: Pairs
    mm: Pairs
    nm: Pairs


def _counted(i: torch.Tensor, j: torch.Tensor, cols: int) -> Pairs:
    key, count = torch.unique(i * cols + j, return_counts=True)
    return key // cols, key % cols, count.double()


def pair_sample(n: int, m: int, pairs: int, seed: int) -> PairSample:
    """`pairs` random pairs of each type: N-N and M-M with i < j (never i == j), N-M any."""
    g = torch.Generator().manual_seed(seed)

    def within(size: int) -> Pairs:
        i = torch.randint(size, (pairs,), generator=g)
        j = (i + torch.randint(1, size, (pairs,), generator=g)) % size  # j != i, uniform
        return _counted(torch.minimum(i, j), torch.maximum(i, j), size)

    nn, mm = within(n), within(m)
    return PairSample(nn, mm, _counted(torch.randint(n, (pairs,), generator=g), torch.randint(m, (pairs,), generator=g), m))


PAPER_SEEDS = (10, 100, 1000)  # the authors' seeds for N-N, M-M, N-M draws


def paper_pair_sample(n: int, m: int, draws: int = 500) -> PairSample:
    """The authors' pair draws (their save_all_pairs_cos_sim.py): for each type `draws` times, reseed Python's
    `random` with the type's seed (+1 per draw), then `random.sample` two distinct prompts of the pool (N-N,
    M-M) or one of each (N-M). Draws repeat across reseeds; the sample counts them. Sampling indices draws the
    same positions as sampling the prompt list (sample depends only on its length)."""
    def within(size: int, seed: int) -> Pairs:
        ij = []
        for d in range(draws):
            random.seed(seed + d)
            i, j = random.sample(range(size), 2)
            ij.append((min(i, j), max(i, j)))
        t = torch.tensor(ij)
        return _counted(t[:, 0], t[:, 1], size)

    cross = []
    for d in range(draws):
        random.seed(PAPER_SEEDS[2] + d)
        cross.append((random.sample(range(n), 1)[0], random.sample(range(m), 1)[0]))
    t = torch.tensor(cross)
    return PairSample(within(n, PAPER_SEEDS[0]), within(m, PAPER_SEEDS[1]), _counted(t[:, 0], t[:, 1], m))


def sampled_cosines(X: torch.Tensor, Y: torch.Tensor, pairs: Pairs, chunk: int = 4096) -> torch.Tensor:
    """[K, P] float32 cosines of the sampled pairs (x_i, y_j), normalised and clamped as the kernel does."""
    i, j, _ = pairs
    iX, iY = inverse_norms(X), inverse_norms(Y)
    out = []
    for p0 in range(0, len(i), chunk):
        a, b = i[p0 : p0 + chunk].to(X.device), j[p0 : p0 + chunk].to(X.device)
        dot = (X[:, a].float() * Y[:, b].float()).sum(-1)
        out.append((dot * iX[:, a] * iY[:, b]).clamp(-1.0, 1.0).cpu())
    return torch.cat(out, 1)


def sampled_mean(values: torch.Tensor, pairs: Pairs, w1: torch.Tensor, w2: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """[K, R]: Σ_p count_p w1[r,i_p] w2[r,j_p] v_kp / Σ_p count_p w1[r,i_p] w2[r,j_p] for values [K, P]."""
    i, j, count = pairs
    num = torch.zeros(values.shape[0], w1.shape[0], dtype=torch.float64)
    den = torch.zeros(w1.shape[0], dtype=torch.float64)
    for p0 in range(0, len(i), chunk):
        sl = slice(p0, p0 + chunk)
        w = w1[:, i[sl]].double() * w2[:, j[sl]].double() * count[sl]  # [R, chunk]
        num += values[:, sl].double() @ w.T
        den += w.sum(1)
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
    replicates: torch.Tensor  # [R, K] angle gap per bootstrap replicate (R may be 0), in `definition`
    definition: str = "mean-of-angles"
    path: str = "torch"  # which pair-statistics implementation ran

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


def _gap(nm: torch.Tensor, nn: torch.Tensor, cosines: bool) -> torch.Tensor:
    """The gap from N-M and N-N means: of angles (given in degrees), or of cosines turned into angles."""
    return degrees(nm) - degrees(nn) if cosines else nm - nn


def gap_stats(A: torch.Tensor, B: torch.Tensor, sample: PairSample | None,
              weights: tuple[torch.Tensor, torch.Tensor] | None, definition: str = "mean-of-angles") -> GapStats:
    """Means over all pairs (sample None: the kernel's exact ones) or over sampled pairs, plus bootstrap
    replicates of the gap. No pair matrix is ever built: memory stays O(tile) whatever the prompt counts."""
    cosines = definition == "angle-of-mean-cosine"
    reps = torch.zeros(0, A.shape[0], dtype=torch.float64)
    boot = weights is not None and weights[0].shape[0] > 0
    if sample is None:
        ps = pair_statistics(A, B)
        means, path = [ps.cos_aa, ps.cos_bb, ps.cos_ab, ps.angle_aa, ps.angle_bb, ps.angle_ab], ps.path
        if boot:
            ws = weighted_pair_sums(A, B, *weights, angles=not cosines)
            reps = _gap(ws.mean("ab"), ws.mean("aa"), cosines).T
    else:
        cos = [sampled_cosines(X, Y, p) for X, Y, p in ((A, A, sample.nn), (B, B, sample.mm), (A, B, sample.nm))]
        ones = [torch.ones(1, A.shape[1]), torch.ones(1, B.shape[1])]
        sides = [(ones[0], ones[0]), (ones[1], ones[1]), (ones[0], ones[1])]
        pairs = [sample.nn, sample.mm, sample.nm]
        means = [sampled_mean(c, p, *w)[:, 0] for c, p, w in zip(cos, pairs, sides)]
        means += [sampled_mean(degrees(c), p, *w)[:, 0] for c, p, w in zip(cos, pairs, sides)]
        path = "sampled"
        if boot:
            wn, wm = weights
            f = (lambda c: c) if cosines else degrees
            reps = _gap(sampled_mean(f(cos[2]), sample.nm, wn, wm), sampled_mean(f(cos[0]), sample.nn, wn, wn), cosines).T
    return GapStats(*[x.double().cpu() for x in means], replicates=reps, definition=definition, path=path)


@dataclass
class RangeRule:
    """The initial safety-layer range [i, j] (inclusive, 0-based), as docs/commands/scan.md's initial-range rule
    documents it.

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
