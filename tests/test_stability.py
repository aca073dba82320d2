"""locate's uncertainty: paired bootstrap CIs per count, the search from several starts on resamples of
D_o, the stability map and the recommendation (auditor/core/stability.py, workflows/locate_stability.py). On the planted model without a
guard (it has no language to guard; test_locate_guard.py has the guard)."""

import json

import numpy as np
from click.testing import CliRunner

from auditor.cli import main
from auditor.core.search import landscape
from auditor.core.bootstrap import prompt_resamples as bootstrap_weights
from auditor.core.stability import PairedCI, ResampledCount, as_bits, from_bits, layer_frequency, summarize
from auditor.workflows.locate import LocateConfig, run_locate
from conftest import PLANTED_BLOCK

BLOCK = PLANTED_BLOCK



def test_bootstrap_weights_draw_n_prompts_and_repeat_with_the_seed():
    w = bootstrap_weights(50, 200, seed=3)
    assert w.shape == (200, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    assert (w == bootstrap_weights(50, 200, seed=3)).all() and not (w == bootstrap_weights(50, 200, seed=4)).all()
    assert abs(w.mean() - 1) < 0.05  # each prompt drawn once per resample on average


def test_paired_difference_is_narrower_than_the_counts_suggest():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.4
    b = a.copy()
    b[np.flatnonzero(~a)[:6]] = True  # b refuses everything a does and 6 more: a certain, small difference
    ci = PairedCI(200)
    ca, cb, d = ci.count(as_bits(a)), ci.count(as_bits(b)), ci.difference(as_bits(b), as_bits(a))
    assert ca[0] <= a.sum() <= ca[1] and cb[0] <= b.sum() <= cb[1]
    assert cb[0] < ca[1]  # the counts' CIs overlap...
    assert 0 < d[0] <= 6 <= d[1] <= 14  # ...but the paired difference is above 0
    assert (from_bits(as_bits(a)) == a).all()
    # the landscape's sharper test: the binomial rule calls b within noise of a, the paired one does not
    rows = [{"range": [1, 2], "count": int(b.sum())}, {"range": [3, 3], "count": int(a.sum())}]
    bits = {(1, 2): as_bits(b), (3, 3): as_bits(a)}
    paired = lambda x, y: ci.difference(bits[tuple(x)], bits[tuple(y)])  # noqa: E731
    assert landscape(rows, (1, 2), int(b.sum()), 1.2, 200)["near"] == [[3, 3]]
    assert landscape(rows, (1, 2), int(b.sum()), 1.2, 200, paired=paired)["near"] == []


def test_a_resampled_count_is_the_weighted_sum_of_the_verdicts():
    bits = {None: "0110", (1, 2): "1110"}
    w = np.array([2, 0, 1, 1])
    count = ResampledCount(lambda rng, alpha: bits[rng], w)
    assert count(None) == 1 and count((1, 2)) == 3  # 0·2 + 1·0 + 1·1 + 0·1; 1·2 + 1·0 + 1·1 + 0·1


def test_summarize_recommends_the_most_frequent_range_as_good_as_the_best():
    runs = [{"start": s, "resample": r, "range": rg} for s, rg in (("a", [4, 6]), ("b", [4, 6]), ("c", [0, 6]), ("d", [9, 9]))
            for r in range(3)]
    counts = {(4, 6): 50, (0, 6): 52, (9, 9): 20}
    worse = lambda x, y: [counts[tuple(x)] - counts[tuple(y)] - 5, counts[tuple(x)] - counts[tuple(y)] + 5]  # noqa: E731
    out = summarize(runs, 10, lambda rg: counts[tuple(rg)], worse, 1)
    assert out["recommended"]["range"] == [4, 6] and out["verdict"] == "stable" and out["recommended"]["share"] == 0.5
    assert [e["as_good_as_best"] for e in out["ends"]] == [True, True, False]
    assert out["layer_frequency"][4] == 0.75 and out["layer_frequency"][9] == 0.25 and out["consensus_layers"] == [4, 5, 6]
    assert out["by_start"]["c"] == layer_frequency([[0, 6]], 10)
    scattered = [{"start": str(k), "resample": 0, "range": rg} for k, rg in enumerate(([0, 6], [1, 6], [2, 6], [4, 6], [4, 6], [8, 9]))]
    rough = summarize(scattered, 10, lambda rg: 50, lambda x, y: [-1, 1], 1)
    assert rough["verdict"] == "start-dependent" and rough["recommended"]["range"] == [4, 6]


def test_locate_stability_on_the_planted_model(planted, tmp_path):
    """Four starts × four samples of D_o all find ranges holding the planted block; the recommendation is the
    block itself, and the resampled searches cost few model runs (the verdicts are reused)."""
    folder, d_o, _ = planted
    journal = tmp_path / "loc.journal.jsonl"
    cfg = lambda: LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), limit=None,  # noqa: E731
                               classifier="opening", alpha=1.3, survey=2, starts="auto", resamples=3, journal=str(journal))
    rep = run_locate(cfg())
    st = rep["stability"]
    assert [s["label"] for s in st["starts"]] == ["survey", "6-7", "0-1", "2-3"]  # next windows by count, none overlapping 4-5
    assert len(st["runs"]) == 4 * 4 and {r["resample"] for r in st["runs"]} == {0, 1, 2, 3}
    assert st["recommended"]["range"] == list(BLOCK) and st["verdict"] in ("stable", "nested")
    assert all(st["layer_frequency"][k] == 1.0 for k in range(BLOCK[0], BLOCK[1] + 1))
    assert st["layer_frequency"][9] == 0.0 and rep["safety_layers"] == list(BLOCK)
    assert st["recommended"]["ci95"][0] <= st["recommended"]["count"] <= st["recommended"]["ci95"][1]
    # every count has its CI and its paired difference from the baseline
    for r in rep["sweep"] + rep["controls"] + rep["survey"]["windows"]:
        assert r["ci95"][0] <= r["count"] <= r["ci95"][1]
        assert r["delta_ci95"][0] <= r["count"] - rep["baseline"] <= r["delta_ci95"][1]
    assert rep["baseline_ci95"][0] <= rep["baseline"] <= rep["baseline_ci95"][1]
    assert rep["landscape"]["noise_rule"].startswith("paired")
    rows = [json.loads(x) for x in journal.read_text().splitlines()]
    assert all(len(r["refused"]) == rep["n_prompts"] and r["refused"].count("1") == r["count"] for r in rows)
    assert len(rows) == rep["counts_computed"] < 40
    again = run_locate(cfg())
    assert again["counts_computed"] == 0 and again["stability"] == st
    # a journal from before verdicts were kept: counts reused, verdicts counted again once
    for r in rows:
        r.pop("refused")
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows))
    old = run_locate(cfg())
    assert old["stability"]["recommended"] == st["recommended"] and 0 < old["counts_computed"] <= len(rows)


def test_locate_cli_stability_table_plot_and_bad_starts(planted, tmp_path):
    folder, d_o, _ = planted
    out, png = tmp_path / "loc.json", tmp_path / "loc.png"
    base = ["locate", str(folder), "--guard-keep", "0", "--template", "raw", "--over-refusal", str(d_o), "--limit", "0", "--classifier", "opening",
            "--alpha", "1.3", "--start", "5-5"]
    r = CliRunner().invoke(main, base + ["--starts", "0-1,8-9", "--resamples", "2", "--json", str(out), "--plot", str(png)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "stability: 3 start(s) × 3 sample(s)" in r.output and "recommended: layers 4–6" in r.output
    rep = json.loads(out.read_text())
    assert [s["label"] for s in rep["stability"]["starts"]] == ["5-5", "0-1", "8-9"] and png.read_bytes()[:4] == b"\x89PNG"
    for args, msg in ((["--starts", "3-x"], "is not a layer range"), (["--starts", "5-2"], "needs 0 <= i <= j"),
                      (["--starts", ","], "--starts is empty"), (["--starts", "8-12"], "outside the model"),
                      (["--resamples", "-1"], "--resamples must be >= 0")):
        res = CliRunner().invoke(main, base + args)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)
