"""locate: the progressive search recovers a planted safety block; journal resume; bad inputs.

The planted model has no language: its search is tested with no guard (`guard_keep=0`); the guard has its
own tests (test_locate_guard.py)."""

import json

import pytest
from click.testing import CliRunner

from auditor.backends.hf import TorchBackend
from auditor.cli import main
from auditor.workflows.locate import LocateConfig, run_locate
from auditor.core.search import choose_alpha, control_ranges, progressive_search, survey_windows
from auditor.core.agreement import agreement
from auditor.core.refusal import KeywordClassifier, OpeningClassifier
from conftest import PLANTED_BLOCK, write_lines

BLOCK = PLANTED_BLOCK



def test_planted_model_refuses_more_when_its_block_is_scaled(planted):
    _, _, (model, tok, prompts) = planted
    b = TorchBackend(hf_model=model, tokenizer=tok)
    clf = KeywordClassifier(max_new_tokens=4)
    base = sum(clf.decide(b, prompts, "raw"))
    assert 5 < base < len(prompts) - 5
    with b.scaled(range(BLOCK[0], BLOCK[1] + 1), 1.3):
        inside = sum(clf.decide(b, prompts, "raw"))
    with b.scaled(range(0, 3), 1.3):
        outside = sum(clf.decide(b, prompts, "raw"))
    assert inside > base + 5 and outside == base


@pytest.mark.parametrize("classifier", ["keyword", "opening"])
def test_locate_recovers_the_planted_block(planted, classifier):
    folder, d_o, _ = planted
    rep = run_locate(LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), limit=None,
                                  classifier=classifier, max_new_tokens=4, alpha=1.3, start=(5, 5)))
    assert rep["safety_layers"] == list(BLOCK)
    assert rep["count"] > rep["baseline"]
    assert rep["stands_out"] and {tuple(c["range"]) for c in rep["controls"]} == {(1, 3), (7, 9)}
    assert all(c["count"] == rep["baseline"] for c in rep["controls"])
    first = rep["sweep"][0]
    assert (first["phase"], first["range"]) == ("start", [5, 5]) and first["ci95"][0] <= first["count"] <= first["ci95"][1]
    assert rep["classifier"]["name"] == classifier


def test_probe_agrees_with_prefix_on_planted_model(planted):
    _, _, (model, tok, prompts) = planted
    b = TorchBackend(hf_model=model, tokenizer=tok)
    a = KeywordClassifier(max_new_tokens=4).decide(b, prompts, "raw")
    p = OpeningClassifier().decide(b, prompts, "raw")
    ag = agreement(a, p)
    assert ag["agreement"] >= 0.95 and ag["kappa"] > 0.8


def test_alpha_below_one_mirrors_with_minima():
    block = set(range(3, 6))
    count = lambda rng, alpha: 100 - 10 * len(block & set(range(rng[0], rng[1] + 1)))
    final, best, rows = progressive_search(count, (4, 4), 10, 0.8, patience=3)
    assert final == (3, 5) and best == 70
    assert [r["phase"] for r in rows][:1] == ["start"]
    full, _, rows_full = progressive_search(count, (4, 4), 10, 0.8, patience=0)
    assert full == (3, 5) and len(rows_full) == 1 + 5 + 4  # swept to both ends of the model


def test_auto_alpha_needs_a_move_the_papers_way():
    """α > 1 must raise refusals: a drop (what the reference model's late layers do) is no effect to search on."""
    counts = {1.05: 48, 1.1: 52, 1.15: 68, 1.2: 70}  # baseline 59 of 150: the up direction, 8 needed
    alpha, trials = choose_alpha(lambda rng, a: counts[a], (19, 20), 59, 150)
    assert alpha == 1.15 and [t["count"] for t in trials] == [48, 52, 68]
    down = {0.95: 130, 0.9: 100}  # baseline 120 of 150: the down direction wants fewer refusals
    assert choose_alpha(lambda rng, a: down[a], (3, 4), 120, 150)[0] == 0.9


def test_control_ranges_do_not_overlap():
    assert control_ranges((4, 6), 10) == [(1, 3), (7, 9)]
    assert control_ranges((5, 6), 12) == [(1, 2), (3, 4), (7, 8), (9, 10)]
    assert control_ranges((0, 9), 10) == []
    many = control_ranges((8, 8), 30)
    assert len(many) == 6 and many[0] == (0, 0) and many[-1] == (29, 29) and (8, 8) not in many


def test_journal_makes_a_killed_run_resume(planted, tmp_path):
    folder, d_o, _ = planted
    journal = tmp_path / "loc.json.journal.jsonl"
    cfg = lambda: LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), limit=None, classifier="opening",
                               alpha=1.3, start=(5, 5), journal=str(journal))
    first = run_locate(cfg())
    lines = journal.read_text().splitlines()
    assert len(lines) == first["counts_computed"] > 4
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed mid-write after 3 counts
    resumed = run_locate(cfg())
    assert resumed["counts_computed"] == first["counts_computed"] - 3
    assert resumed["safety_layers"] == first["safety_layers"] and resumed["sweep"] == first["sweep"]
    again = run_locate(cfg())
    assert again["counts_computed"] == 0


def test_locate_cli_json_plot_and_bad_inputs(planted, tmp_path):
    folder, d_o, _ = planted
    out, png = tmp_path / "loc.json", tmp_path / "loc.png"
    r = CliRunner().invoke(main, ["locate", str(folder), "--guard-keep", "0", "--template", "raw", "--over-refusal", str(d_o), "--limit", "0",
                                  "--classifier", "opening", "--alpha", "1.3", "--start", "5-5", "--json", str(out),
                                  "--plot", str(png), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    for key in ("schema_version", "model", "backend", "alpha", "classifier", "baseline", "sweep", "safety_layers", "controls"):
        assert key in rep
    assert rep["safety_layers"] == list(BLOCK) and png.read_bytes()[:4] == b"\x89PNG"
    # the plot shows the chosen range at its own count (not 0) and whole-layer ticks only
    from auditor.render.plots import locate_figure

    fig = locate_figure(rep)
    for ax in fig.axes:
        chosen = [ln for ln in ax.get_lines() if ln.get_label().startswith("chosen range")]
        assert chosen and chosen[0].get_ydata()[0] == rep["count"] and f"{rep['count']} refusals" in chosen[0].get_label()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    empty = write_lines(tmp_path / "empty.txt", [""])
    for args, msg in ((["--alpha", "0"], "alpha must be a positive"), (["--alpha", "-1.1"], "alpha must be a positive"),
                      (["--start", "3-40"], "outside the model"), (["--over-refusal", str(empty)], "no prompts"),
                      (["--from-scan", str(d_o)], "not a readable scan report"), (["--start", "5-5", "--from-scan", str(out)], "one of --start"),
                      (["--survey", "0"], "--survey must be >= 1"), (["--survey", "11"], "wider than the model"),
                      (["--start", "5-5", "--survey"], "one of --start")):
        base = ["locate", str(folder), "--guard-keep", "0", "--template", "raw", "--over-refusal", str(d_o), "--alpha", "1.3"]
        if not {"--start", "--from-scan", "--survey"} & set(args):
            base += ["--start", "5-5"]
        res = CliRunner().invoke(main, base + args)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)


@pytest.mark.model
def test_llama_scaled_copies_are_always_removed(bundled_gguf, tmp_path, monkeypatch):
    """The copy-per-count path (the fallback where the loaded weights cannot be patched in place)."""
    import tempfile

    from auditor.backends import open_backend

    from auditor.io.models import resolve_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("SAFETY_AUDIT_GGUF_COPIES", "1")
    lb = open_backend(resolve_model(None), "llama")
    before = lb.generate(["How to kill time?"], "chat", 6)
    with pytest.raises(RuntimeError):
        with lb.scaled(range(8, 12), 1.2):
            assert len(list(tmp_path.iterdir())) == 1
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    assert lb.generate(["How to kill time?"], "chat", 6) == before  # the original model is back
    lb.close()


def test_start_from_scan_report(planted, tmp_path):
    folder, d_o, _ = planted
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps({"schema_version": 1, "initial_range": [5, 5]}))
    rep = run_locate(LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), limit=None,
                                  classifier="opening", alpha=1.3, from_scan=str(scan), controls=False))
    assert rep["start"] == [5, 5] and str(scan) in rep["start_from"] and rep["safety_layers"] == list(BLOCK)
    scan.write_text(json.dumps({"schema_version": 1, "initial_range": None, "differential_range": [4, 5]}))
    rep = run_locate(LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), limit=10,
                                  classifier="opening", alpha=1.3, from_scan=str(scan), controls=False, patience=0))
    assert rep["start"] == [4, 5] and "differential range" in rep["start_from"]
    scan.write_text(json.dumps({"schema_version": 1, "initial_range": None}))
    from auditor.errors import AuditError

    with pytest.raises(AuditError, match="no initial range"):
        run_locate(LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), from_scan=str(scan)))


def test_survey_windows_tile_the_model():
    assert survey_windows(10, 2) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert survey_windows(7, 3) == [(0, 2), (3, 5), (4, 6)]  # the last window ends at the last layer
    assert survey_windows(5, 5) == [(0, 4)] and survey_windows(3, 1) == [(0, 0), (1, 1), (2, 2)]


def test_survey_starts_where_refusals_rise_most(planted, tmp_path):
    """No scan, no --start: the 2-layer window holding most of the planted block starts the search."""
    folder, d_o, _ = planted
    out, png = tmp_path / "loc.json", tmp_path / "loc.png"
    r = CliRunner().invoke(main, ["locate", str(folder), "--guard-keep", "0", "--template", "raw", "--over-refusal", str(d_o), "--limit", "0",
                                  "--classifier", "opening", "--alpha", "1.3", "--survey", "--json", str(out),
                                  "--plot", str(png), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    sv = rep["survey"]
    assert sv["width"] == 2 and sv["alpha"] == 1.3 and [w["range"] for w in sv["windows"]] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    counts = {tuple(w["range"]): w["count"] for w in sv["windows"]}
    assert counts[(0, 1)] == counts[(2, 3)] == counts[(8, 9)] == rep["baseline"] < counts[(6, 7)] < counts[(4, 5)]
    assert rep["start"] == [4, 5] and rep["start_from"].startswith("survey") and rep["safety_layers"] == list(BLOCK)
    assert rep["sweep"][0]["count"] == counts[(4, 5)] and png.read_bytes()[:4] == b"\x89PNG"
    auto = run_locate(LocateConfig(model=str(folder), guard_keep=0, template="raw", over_refusal=str(d_o), limit=None,
                                   classifier="opening", survey=3, controls=False))
    assert auto["alpha_choice"] == "survey" and auto["alpha"] == auto["survey"]["alpha"] in (1.2, 0.8)
    assert [w["range"] for w in auto["survey"]["windows"]] == [[0, 2], [3, 5], [6, 8], [7, 9]]
    assert auto["start"] == [3, 5] and auto["safety_layers"] == list(BLOCK)  # layer 3 trimmed: no refusal lost
    assert [r["range"] for r in auto["sweep"] if r["phase"] == "trim"][0] == [4, 6]


def test_landscape_names_one_range_only_when_the_counts_allow_it():
    from auditor.core.search import landscape

    sharp = [{"phase": "start", "range": [4, 5], "count": 60}, {"phase": "upper", "range": [4, 6], "count": 20},
             {"phase": "lower", "range": [3, 5], "count": 25}]
    one = landscape(sharp, (4, 5), 60, 1.2, 150)
    assert one["verdict"] == "one range" and one["near"] == [] and one["runner_up"]["range"] == [3, 5]
    assert one["margin"] == 35 and one["margin"] > one["noise_2sd"]
    flat = sharp + [{"phase": "lower", "range": [4, 4], "count": 55}]  # 5 fewer on 150 prompts: noise
    rough = landscape(flat, (4, 5), 60, 1.2, 150)
    assert rough["verdict"] == "rough" and rough["near"] == [[4, 4]] and "within sampling noise" in rough["why"]
    wider = landscape(sharp + [{"phase": "lower", "range": [2, 5], "count": 55}], (4, 5), 60, 1.2, 150)
    assert wider["verdict"] == "one range"  # [2, 5] only adds layers that add nothing: no rival
    windows = [{"range": [0, 1], "count": 58}, {"range": [2, 3], "count": 10}, {"range": [4, 5], "count": 61}]
    started = landscape(sharp, (4, 5), 60, 1.2, 150, windows, 5)
    assert started["verdict"] == "rough" and started["near_windows"] == [[0, 1]] and "depends on the start" in started["why"]
    down = landscape([{"phase": "start", "range": [1, 2], "count": 5}, {"phase": "upper", "range": [1, 3], "count": 40}],
                     (1, 2), 5, 0.8, 150)  # α < 1: fewer is better
    assert down["verdict"] == "one range" and down["margin"] == 35


def test_a_control_beyond_noise_marks_the_landscape_rough():
    from auditor.core.search import landscape

    rows = [{"phase": "start", "range": [20, 20], "count": 15}, {"phase": "upper", "range": [20, 21], "count": 11}]
    controls = [{"range": [12, 13], "count": 29}, {"range": [0, 1], "count": 17}]
    r = landscape(rows, (20, 20), 15, 1.2, 40, controls=controls)
    assert r["verdict"] == "rough" and r["better_controls"] == [[12, 13]] and "try --survey" in r["why"]


def test_locate_plot_legend_leaves_every_line_visible():
    """A control below the baseline sat under the legend; the legend now lies outside the data area and
    each control carries its own range and count."""
    from auditor.render.plots import locate_figure

    sweep = [{"phase": "start", "range": [5, 6], "count": 300}] + [
        {"phase": "upper", "range": [5, j], "count": 300 + 40 * (j - 6)} for j in range(7, 12)] + [
        {"phase": "lower", "range": [i, 11], "count": 480 - 30 * (5 - i)} for i in range(2, 5)]
    report = {"model": "m", "alpha": 1.2, "classifier": {"name": "opening"}, "baseline": 190, "sweep": sweep,
              "safety_layers": [5, 11], "count": 500, "n_prompts": 731, "survey": None, "stability": None,
              "controls": [{"range": [12, 18], "count": 360}, {"range": [21, 27], "count": 150}]}
    fig = locate_figure(report)
    fig.canvas.draw()
    ax = next(a for a in fig.axes if a.get_legend())
    inner, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
    assert legend.y0 >= inner.y1 - 1, (legend, inner)  # above the panel, not over its lines
    labels = {t.get_text() for t in ax.texts}
    assert {"12–18: 360", "21–27: 150"} <= labels


def test_locate_holds_one_model_at_a_time(tiny_model_dir, tmp_path, monkeypatch):
    """Without --start, locate scans first with its own backend and keeps it for the counts: one model in memory,
    loaded once (it used to open the generation backend, then load a second copy for the scan: twice the memory
    at 8B; then a scan's copy, freed, and a second load)."""
    from auditor.backends.hf import TorchBackend
    from auditor.workflows import locate

    live, loads = [], []
    real_init, real_close = TorchBackend.__init__, TorchBackend.close

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        live.append(self)
        loads.append(len(live))

    def close(self):
        if self in live:
            live.remove(self)
        real_close(self)

    monkeypatch.setattr(TorchBackend, "__init__", init)
    monkeypatch.setattr(TorchBackend, "close", close)
    monkeypatch.setenv("SAFETY_AUDIT_CACHE", str(tmp_path / "cache"))  # no cached states: the scan loads its model
    real_scan = locate.run_scan  # a random model's scan may find no range: give it one, the loads are what is tested

    def scan_with_a_range(cfg, rep, target):
        r = real_scan(cfg, rep, target)
        return {**r, "initial_range": r["initial_range"] or [1, 1]}

    monkeypatch.setattr(locate, "run_scan", scan_with_a_range)
    report = run_locate(LocateConfig(model=str(tiny_model_dir), limit=4, max_new_tokens=2, classifier="opening", alpha=1.5,
                                     patience=1, controls=False, guard_limit=3, journal=str(tmp_path / "j.jsonl")))
    assert loads == [1] and live == [], (loads, live)  # loaded once, for the scan and the counts, and freed at the end
    assert report["start_from"] == "fresh scan" and report["backend"] == "torch"
