"""locate's guard: a range is chosen only if scaling it keeps what the model should keep doing (its refusals of
harmful prompts when α < 1, its answers to benign ones when α > 1). core.search asks it; workflows/locate_guard
counts it. The searches below are synthetic where the logic is the point, and the planted model's where the
counts must be real ones."""

import json

import pytest
from click.testing import CliRunner

from auditor.backends.hf import TorchBackend
from auditor.cli import main
from auditor.core.refusal import OpeningClassifier
from auditor.core.search import landscape, progressive_search, survey
from auditor.core.stability import summarize
from auditor.workflows.locate import LocateConfig, check_config, run_locate
from auditor.workflows.locate_guard import Guard, default_guard_set
from conftest import write_lines

SAFETY, BLUNT = {3, 4, 5}, {0, 1}  # synthetic: layers that lift over-refusal only, and layers that break every refusal


def fewer_refusals(rng, alpha):
    """D_o refusals when `rng` is scaled down: the blunt layers lower them most."""
    layers = set(range(rng[0], rng[1] + 1))
    return 100 - 10 * len(SAFETY & layers) - 20 * len(BLUNT & layers)


def keeps_harmful(rng) -> bool:
    return not BLUNT & set(range(rng[0], rng[1] + 1))


def test_the_guard_keeps_the_search_from_a_blunt_minimum():
    blunt_end, best, _ = progressive_search(fewer_refusals, (4, 4), 10, 0.8, patience=0)
    assert blunt_end == (0, 5) and best == 30  # unguarded: the fewest refusals are where everything breaks
    asked = []
    guard = lambda rng: asked.append(rng) or keeps_harmful(rng)  # noqa: E731
    final, best, rows = progressive_search(fewer_refusals, (4, 4), 10, 0.8, patience=0, admissible=guard)
    assert final == (3, 5) and best == 70
    assert [r["range"] for r in rows if r.get("blunt")] == [[1, 5], [0, 5]]
    # asked only about candidates that would have become the new best
    assert set(asked) == {(4, 5), (3, 5), (1, 5), (0, 5)}


def test_a_guarded_trim_stops_before_a_blunt_range():
    """The trim after a survey drops end layers while the count stays as good: never into a range the guard refuses."""
    count = lambda rng, a: 40  # noqa: E731 - every layer dropped costs nothing by count
    wide_enough = lambda r: r[1] - r[0] >= 1  # noqa: E731 - here, one layer alone breaks the guard
    final, _, rows = progressive_search(count, (1, 3), 6, 0.8, patience=1, trim=True, admissible=wide_enough)
    assert final == (2, 3)
    assert [r["range"] for r in rows if r.get("blunt")] == [[3, 3], [2, 2]]
    assert progressive_search(count, (1, 3), 6, 0.8, patience=1, trim=True)[0] == (3, 3)  # unguarded: down to one


def test_the_survey_starts_from_the_best_window_the_guard_admits():
    windows = lambda guard: survey(fewer_refusals, 8, 2, 0.8, 100, guard)  # noqa: E731 - 100: unscaled
    assert windows(None)[0] == (0, 1)
    start, rows = windows(keeps_harmful)
    assert start == (4, 5) and [r["range"] for r in rows if r.get("blunt")] == [[0, 1]]


def test_the_stability_summary_never_recommends_a_refused_end_while_another_passes():
    runs = [{"start": "a", "resample": 0, "range": [0, 5]}, {"start": "a", "resample": 1, "range": [0, 5]},
            {"start": "b", "resample": 0, "range": [3, 5]}]
    count = lambda rg: fewer_refusals(rg, 0.8)  # noqa: E731
    paired = lambda a, b: (count(a) - count(b) - 1, count(a) - count(b) + 1)  # noqa: E731
    assert summarize(runs, 8, count, paired, -1)["recommended"]["range"] == [0, 5]
    assert summarize(runs, 8, count, paired, -1, keeps_harmful)["recommended"]["range"] == [3, 5]
    everything_refused = summarize(runs, 8, count, paired, -1, lambda rg: False)  # nothing passes: the best end
    assert everything_refused["recommended"]["range"] == [0, 5]


def test_a_blunt_range_is_no_rival_in_the_landscape():
    rows = [{"phase": "start", "range": [4, 4], "count": 90}, {"phase": "lower", "range": [3, 5], "count": 70},
            {"phase": "lower", "range": [1, 5], "count": 40, "blunt": True}]
    controls = [{"range": [0, 2], "count": 30, "blunt": True}, {"range": [6, 8], "count": 100}]
    land = landscape(rows, (3, 5), 70, 0.8, 150, controls=controls)
    assert land["verdict"] == "one range" and land["better_controls"] == []
    assert land["runner_up"]["range"] == [4, 4]
    unmarked = landscape([dict(r, blunt=False) for r in rows], (3, 5), 70, 0.8, 150,
                         controls=[dict(c, blunt=False) for c in controls])
    assert unmarked["verdict"] == "rough" and unmarked["better_controls"] == [[0, 2]]


class Verdicts:
    """A guard counter from fixed per-prompt verdicts: range -> '0'/'1' string."""

    def __init__(self, bits: dict, n: int):
        self.table, self.prompts, self.computed = bits, ["p"] * n, 0

    def bits(self, rng, alpha=1.0):
        self.computed += 1
        return self.table[tuple(rng) if rng else None]


def test_the_guard_keeps_refusals_scaling_down_and_answers_scaling_up():
    bits = {None: "1101", (1, 2): "1001", (3, 4): "0000", (5, 6): "1111"}
    down = Guard(Verdicts(bits, 4), 0.8, 0.6, "harmful")
    assert down.held == [0, 1, 3] and down.kept((1, 2)) == round(2 / 3, 4) and down((1, 2))
    assert down.kept((3, 4)) == 0 and not down((3, 4)) and down.kept((5, 6)) == 1
    calls = down.counter.computed
    down((1, 2)), down.kept((1, 2))
    assert down.counter.computed == calls  # asked again: no new count
    up = Guard(Verdicts(bits, 4), 1.2, 0.9, "benign")  # answers ('0') must survive: prompt 2 only
    assert up.held == [2] and up.kept((5, 6)) == 0 and not up((5, 6)) and up((3, 4))
    g = down.describe((1, 2))
    assert g["keeps"] == "refusals" and g["held"] == 3 and g["admitted"] and g["kept"] == round(2 / 3, 4)
    assert [c["range"] for c in g["checked"] if not c["admitted"]] == [[3, 4]]
    nothing = Guard(Verdicts({None: "0000", (1, 2): "0000"}, 4), 0.8, 0.9, "harmful")  # refuses none unscaled
    assert nothing.kept((1, 2)) is None and nothing((1, 2))
    assert default_guard_set(0.8) == "advbench-train" and default_guard_set(1.2) == "alpaca-train"


def test_compat_paper_has_no_guard_unless_asked():
    assert check_config(LocateConfig(start=(3, 4))).guard_keep == 0.9
    assert check_config(LocateConfig(start=(3, 4), compat="paper")).guard_keep == 0
    assert check_config(LocateConfig(start=(3, 4), compat="paper", guard_keep=0.8)).guard_keep == 0.8


@pytest.fixture(scope="module")
def refused_file(planted, tmp_path_factory):
    """The planted prompts the unscaled model refuses: a harmful set for the guard when scaling down."""
    _, _, (model, tok, prompts) = planted
    verdicts = OpeningClassifier().decide(TorchBackend(hf_model=model, tokenizer=tok), prompts, "raw")
    refused = [p for p, v in zip(prompts, verdicts) if v]
    assert 5 < len(refused) < len(prompts) - 5
    return write_lines(tmp_path_factory.mktemp("guard") / "refused.txt", refused), refused


def test_locate_keeps_to_the_guard_on_real_counts(planted, refused_file, tmp_path):
    """α < 1 on the planted model, the guard being the prompts it refuses unscaled. Every retention the report
    gives equals the share of those prompts still refused when the test scales that range itself; with the
    threshold just above what the unguarded search's range keeps, that range is refused as blunt and the
    chosen one passes (or is the start, reported as blunt)."""
    folder, d_o, (model, tok, _) = planted
    guard_path, refused = refused_file
    cfg = lambda keep, journal: LocateConfig(  # noqa: E731
        model=str(folder), template="raw", over_refusal=str(d_o), limit=None, classifier="opening", alpha=0.7,
        start=(5, 5), controls=False, guard=str(guard_path), guard_keep=keep, journal=str(tmp_path / journal))
    free = run_locate(cfg(0.0, "free.jsonl"))
    assert free["guard"] is None
    keep = round(min(1.0, _kept(model, tok, refused, free["safety_layers"], 0.7) + 0.01), 4)
    rep = run_locate(cfg(keep, "guarded.jsonl"))
    g = rep["guard"]
    assert g["set"] == str(guard_path) and g["keeps"] == "refusals" and g["held"] == len(refused) and g["keep"] == keep
    for c in g["checked"]:  # each retention as the test measures it
        assert c["kept"] == round(_kept(model, tok, refused, c["range"], 0.7), 4), c
        assert c["admitted"] == (c["kept"] >= keep)
    assert rep["safety_layers"] != free["safety_layers"]
    assert free["safety_layers"] in [c["range"] for c in g["checked"] if not c["admitted"]]
    assert all(r["range"] != rep["safety_layers"] for r in rep["sweep"] if r.get("blunt"))
    assert g["admitted"] or rep["safety_layers"] == rep["start"]
    again = run_locate(cfg(keep, "guarded.jsonl"))  # the guard's counts are journaled like D_o's
    assert again["counts_computed"] == 0 and again["guard"] == g


def _kept(model, tok, refused, rng, alpha) -> float:
    b = TorchBackend(hf_model=model, tokenizer=tok)
    with b.scaled(range(rng[0], rng[1] + 1), alpha):
        return sum(OpeningClassifier().decide(b, refused, "raw")) / len(refused)


def test_locate_cli_shows_the_guard_and_refuses_bad_guard_options(planted, refused_file, tmp_path):
    folder, d_o, _ = planted
    guard_path, _ = refused_file
    base = ["locate", str(folder), "--template", "raw", "--over-refusal", str(d_o), "--limit", "0", "--classifier",
            "opening", "--alpha", "0.7", "--start", "5-5", "--no-controls"]
    out = tmp_path / "loc.json"
    r = CliRunner().invoke(main, base + ["--guard", str(guard_path), "--guard-keep", "1", "--starts", "3-3",
                                         "--json", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    text = " ".join(r.output.split())  # the caption wraps
    assert f"{rep['guard']['held']} refusals unscaled" in text and "refused as blunt" in text
    assert ("BLUNT" in text) == (not rep["guard"]["admitted"])
    assert "guard kept" in text  # the stability table's column
    ends = rep["stability"]["ends"]
    assert ends and all("guard_kept" in e and e["guard_admitted"] == (e["guard_kept"] >= 1) for e in ends)
    from auditor.render.page import load_bundle, render_html, render_markdown
    from auditor.render.plots import locate_figure

    marked = [ln for ax in locate_figure(rep).axes for ln in ax.get_lines() if ln.get_label().startswith("refused by")]
    assert bool(marked) == any(r.get("blunt") for r in rep["sweep"] if r["phase"] in ("upper", "lower"))

    g, bundle = rep["guard"], load_bundle([out])
    said = f"keeps {round(100 * g['kept'])}% of the refusals the unscaled model gives on"
    assert said in render_html(bundle) and ("blunt" in render_html(bundle)) == (not g["admitted"])
    assert f"keeps {round(100 * g['kept'])}% of its refusals on the guard set" in render_markdown(bundle)
    missing = tmp_path / "nope.txt"
    for args, msg in ((["--guard-keep", "1.5"], "at most 1"), (["--guard-keep", "-0.1"], "--guard-keep must be >= 0"),
                      (["--guard-limit", "-1"], "--guard-limit must be >= 0"), (["--guard", str(missing)], "nope.txt")):
        res = CliRunner().invoke(main, base + args)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)
