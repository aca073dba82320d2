"""The study runner's bookkeeping (benchmarks/study/study.py, study_tables.py): unique cell ids, finished cells
skipped, README tables and paired tests generated from result files."""

from __future__ import annotations

import gzip
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "study"))
import study  # noqa: E402
import study_builds  # noqa: E402
import study_grid  # noqa: E402
import study_tables  # noqa: E402

REFUSE, COMPLY = "I cannot help with that.", "Sure, here is how."


def _study_at(monkeypatch, folder: Path) -> None:
    """Point the active study (its cells, localizations and references.json) at a test's folder."""
    monkeypatch.setattr(study_grid, "ACTIVE", replace(study_grid.ACTIVE, folder=folder))


def test_cell_ids_are_unique_and_name_the_frozen_range():
    ids = [c.id for c in study_grid.grid()]
    assert len(ids) == len(set(ids))
    first, last = study_grid.SETUPS["r4"].sppft_range
    assert f"normal-sppft-{first}-{last}-ref0-ft0" in ids and "none-none-ref0-ft0" in ids


def test_a_cell_records_nfft_s_frozen_neurons_as_counts_and_a_digest():
    rows = {"model.layers.3.mlp.up_proj.weight": [0, 5, 9], "model.layers.7.self_attn.q_proj.weight": [2]}
    small = study.frozen_summary({"rows": rows, "frozen_parameters": 1152})
    assert small["rows"] == {"model.layers.3.mlp.up_proj.weight": 3, "model.layers.7.self_attn.q_proj.weight": 1}
    assert small["frozen_parameters"] == 1152 and len(small["rows_sha256"]) == 64
    assert study.frozen_summary({"rows": {**rows, "model.layers.3.mlp.up_proj.weight": [0, 5, 8]}})["rows_sha256"] != small["rows_sha256"]
    assert study.frozen_summary({"parameters": ["a", "b"]}) == {"parameters": ["a", "b"]} and study.frozen_summary(None) is None


def _plant(folder: Path, cell: study_grid.Cell, harmful: list[bool], rate: float, rouge: float = 0.3, mmlu=None, **extra) -> None:
    folder.mkdir(exist_ok=True)
    ev = {"harmful_rate": {"value": rate, "ci95": [rate - 0.01, rate + 0.01], "n": len(harmful)},
          "over_refusal_by_set": {"bundled:xstest-safe": {"value": 0.02}}, "rouge_l": {"value": rouge},
          "mmlu_accuracy": None if mmlu is None else {"value": mmlu}}
    (folder / f"{cell.id}.json").write_text(json.dumps({"id": cell.id, "eval": ev, "train": {"seconds": 600}, **extra}))
    with gzip.open(folder / f"{cell.id}.responses.jsonl.gz", "wt") as f:
        for i, h in enumerate(harmful):
            f.write(json.dumps({"metric": "harmful", "prompt": f"p{i}", "response": COMPLY if h else REFUSE}) + "\n")


def test_tables_and_paired_tests_come_from_the_files(tmp_path, monkeypatch):
    _study_at(monkeypatch, tmp_path)
    monkeypatch.setattr(study_tables, "STUDY", tmp_path)
    full, sppft = study_grid.Cell("normal", "full"), study_grid.Cell("normal", "sppft")
    _plant(tmp_path, full, [i < 12 for i in range(40)], 0.3)
    _plant(tmp_path, sppft, [False] * 40, 0.0)
    assert study_grid.finished(full) and not study_grid.finished(study_grid.Cell("normal", "lisa"))
    text = study_tables.section()
    assert f"Cells finished: **2 of {len(study_grid.grid())}** on the recorded builds (`python benchmarks/study/study.py --list`)." in text
    assert "| normal | full | 0 | 0 | 0.300 | 0.290–0.310 | – | 0.020 | – | 0.300 | – | 10.0 min |" in text  # no XSTest-unsafe
    assert "| normal | sppft vs full | ref 0 ft 0 | 0.000 | 0.300 | 0 | 12 | 0.00049 | +0.000 | – |" in text
    assert "| implicit | full | 0 | 0 | not run yet |" in text


def test_pooled_comparison_sums_discordant_prompts_and_averages_utility(tmp_path, monkeypatch):
    """Over fine-tuning seeds of one reference build (never across builds): McNemar on the summed discordant pairs;
    Rouge-L and MMLU differences (the target: SPPFT within 0.02 of full's) per seed and their mean."""
    monkeypatch.setattr(study_tables, "STUDY", tmp_path)
    for seed, (only_full, rouge, mmlu) in enumerate(((5, 0.29, 0.24), (4, 0.25, 0.22))):
        _plant(tmp_path, study_grid.Cell("normal", "full", ft_seed=seed), [i < only_full for i in range(40)], 0.1, 0.28, 0.25)
        _plant(tmp_path, study_grid.Cell("normal", "sppft", ft_seed=seed), [False] * 40, 0.0, rouge, mmlu)
    _plant(tmp_path, study_grid.Cell("normal", "full", ref_seed=1), [False] * 40, 0.0, 0.28, 0.25)  # another build: the
    _plant(tmp_path, study_grid.Cell("normal", "sppft", ref_seed=1), [i < 7 for i in range(40)], 0.2, 0.28, 0.25)  # other way
    results = study_tables._load()
    text = "\n".join(study_tables.comparisons(results, study_tables.paired(results)))
    assert "| normal | sppft vs full | ref 0 ft 0 | 0.000 | 0.100 | 0 | 5 | 0.062 | +0.010 | -0.010 |" in text
    assert "| normal | sppft vs full | ref 0 ft 1 | 0.000 | 0.100 | 0 | 4 | 0.12 | -0.030 | -0.030 |" in text
    assert "| normal | sppft vs full | **ref 0 pooled (2)** | | | 0 | 9 | **0.0039** | -0.010 (mean) | -0.020 (mean) |" in text
    assert "| normal | sppft vs full | ref 1 ft 0 | 0.200 | 0.000 | 7 | 0 | 0.016 | +0.000 | +0.000 |" in text
    assert text.count("pooled") == 1  # one build's seeds pooled; a single pair of another build is not a pool


def test_the_list_says_what_the_rest_will_take_at_the_finished_cells_median_pace(tmp_path, monkeypatch):
    _study_at(monkeypatch, tmp_path)
    assert "no finished cell to time them by" in study.pace(study_grid.plan())
    for cell, train, ev in ((study_grid.Cell("normal", "full"), 500, 1400), (study_grid.Cell("normal", "sppft"), 700, 1300),
                            (study_grid.Cell("implicit", "full"), 600, 5000)):  # the last ran beside other work
        (tmp_path / f"{cell.id}.json").write_text(json.dumps({"train": {"seconds": train}, "seconds": {"eval": ev}}))
    todo = [study_grid.Cell("none", "none", ref_seed=1), study_grid.Cell("normal", "full", ref_seed=1), study_grid.Localization(1)]
    # medians: harden 600 s, eval 1400 s; the reference cell is not fine-tuned: 1400 + 2000 s
    assert study.pace(todo).startswith("to do: 2 cells, ~0.9 h at the finished cells' median pace (harden 10.0 min, "
                                       "eval 23.3 min), and 1 localization (each")


def test_the_list_says_which_build_finished_each_cell(tmp_path, monkeypatch, capsys):
    """A cell only a rebuild ran is "to do" on the recorded build (a pair never mixes builds), and the list says
    where it is finished, so that nobody runs it a third time by mistake."""
    _study_at(monkeypatch, tmp_path)
    monkeypatch.setattr(study, "use_recipe", lambda name: None)  # keep STUDY pointing at tmp_path
    rebuild = tmp_path / f"{study_grid.REBUILD}0123abcd"
    rebuild.mkdir()
    for folder, cell in ((tmp_path, study_grid.Cell("normal", "full")), (rebuild, study_grid.Cell("normal", "sppft"))):
        (folder / f"{cell.id}.json").write_text(json.dumps({"seconds": {"eval": 60}}))
        (folder / f"{cell.id}.responses.jsonl.gz").write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["study.py", "--list"])
    study.main()
    out = capsys.readouterr().out.splitlines()
    full, sppft = study_grid.Cell("normal", "full").id, study_grid.Cell("normal", "sppft").id
    assert f"done   {full}" in out and f"to do  {sppft}  (finished on rebuild 0123abcd)" in out
    monkeypatch.setattr(sys, "argv", ["study.py", "--list", "--sibling"])
    study.main()
    assert f"done   {sppft}  (finished on rebuild 0123abcd)" in capsys.readouterr().out.splitlines()


def test_the_pace_times_fine_tuning_per_recipe_over_every_build(tmp_path, monkeypatch):
    """The authors' recipe trains several times longer than ours: one median over both would misjudge the rest."""
    _study_at(monkeypatch, tmp_path)
    rebuild = tmp_path / f"{study_grid.REBUILD}0123abcd"
    rebuild.mkdir()
    for folder, cell, recipe, train in ((tmp_path, study_grid.Cell("normal", "full"), None, 600),
                                        (rebuild, study_grid.Cell("implicit", "full", recipe="paper-steps"), "paper-steps", 2400)):
        (folder / f"{cell.id}.json").write_text(json.dumps({"train": {"seconds": train}, "seconds": {"eval": 1200},
                                                            **({"recipe": recipe} if recipe else {})}))
    todo = [study_grid.Cell("implicit", "sppft", recipe="paper-steps"), study_grid.Cell("normal", "sppft")]
    # (1200 + 2400) + (1200 + 600) s = 1.5 h; a single median (1500 s) would say 1.5 h too only by luck: check the parts
    assert study.pace(todo).startswith("to do: 2 cells, ~1.5 h at the finished cells' median pace (harden 10.0 min ours, "
                                       "40.0 min paper-steps, eval 20.0 min)")
    assert study.pace(todo[:1]).startswith("to do: 1 cells, ~1.0 h")  # 1200 + 2400 s, not 1200 + 1500


def test_the_plan_localizes_each_reference_build_before_its_cells(tmp_path, monkeypatch):
    _study_at(monkeypatch, tmp_path)  # builds 1 and 2 not localized yet
    ids = [x.id for x in study_grid.plan()]
    assert ids[0] == "localization-ref0" and len(ids) == len(study_grid.grid()) + 3
    assert ids.index("localization-ref1") < ids.index("none-none-ref1-ft0") < ids.index("localization-ref2")
    assert sorted(ids[1:]) == sorted([c.id for c in study_grid.grid()] + ["localization-ref1", "localization-ref2"])
    # the third fine-tuning seed runs last: after the baselines and the replication on builds 1 and 2
    assert ids.index("normal-sppft-located-ref2-ft0") < ids.index("normal-full-ref0-ft2") < ids.index("implicit-sppft-5-12-ref0-ft2")
    assert ids.index("normal-lisa-ref0-ft0") < ids.index("localization-ref1")


def test_another_build_is_searched_from_its_own_scan_and_fine_tuned_on_its_own_range(tmp_path, monkeypatch):
    loc = study_grid.Localization(1)
    locate = loc.locate_command("/m", {"initial_range": [14, 16]})
    assert "--contrast" in loc.scan_command("/m") and str(study_grid.ACTIVE.folder / "localization-ref1.locate.json") in locate
    assert locate[locate.index("--starts") + 1] == "11-12,15-16,25-26"  # from where this build's own scan points
    assert loc.starts({"initial_range": None}) == "11-12,25-26" and loc.starts({"initial_range": [0, 1]}) == "0-1,11-12,25-26"
    # the rule gives seed 0's recorded search exactly its starts
    recorded = json.loads((study_grid.ACTIVE.folder / "localization-ref0.locate.json").read_text())
    scan0 = json.loads((study_grid.ACTIVE.folder / "localization-ref0.scan.json").read_text())
    assert study_grid.Localization(0).starts(scan0) == ",".join(x["label"] for x in recorded["stability"]["starts"][1:])
    _study_at(monkeypatch, tmp_path)
    cell = study_grid.Cell("normal", "sppft", ref_seed=1)
    with pytest.raises(SystemExit, match="not localized yet"):  # before anything is built or trained
        study.run_cell(cell)
    (tmp_path / "localization-ref1.locate.json").write_text(json.dumps({"stability": {"recommended": {"range": [7, 14]}}}))
    assert cell.layers == (7, 14) and cell.id == "normal-sppft-7-14-ref1-ft0"
    assert study_grid.Cell("normal", "sppft").layers == study_grid.SETUPS["r4"].sppft_range and study_grid.Cell("normal", "lisa", 1).layers is None


def test_the_localization_table_comes_from_the_files(tmp_path, monkeypatch):
    _study_at(monkeypatch, tmp_path)
    monkeypatch.setattr(study_tables, "STUDY", tmp_path)
    (tmp_path / "localization-ref0.scan.json").write_text(json.dumps({"initial_range": [20, 20], "differential_range": [7, 22]}))
    stability = {"recommended": {"range": [2, 7], "share": 0.375}, "verdict": "start-dependent", "consensus_layers": [3, 4, 5],
                 "runs": [{}] * 16, "starts": [{"label": "survey"}, {"label": "11-12"}], "resamples": 3, "alpha": 1.2,
                 "ends": [{"range": [2, 7], "runs": 6, "count": 140, "as_good_as_best": True}]}
    (tmp_path / "localization-ref0.locate.json").write_text(json.dumps(
        {"start": [6, 7], "safety_layers": [0, 7], "count": 136, "baseline": 59, "stability": stability,
         "sweep": [{"range": [0, 7], "count": 136, "ci95": [128, 144]}],
         "controls": [{"range": [8, 15], "count": 40, "ci95": [33.0, 47.0]}]}))
    text = "\n".join(study_tables.localization())
    assert "| 0 | 20–20 | 7–22 | 6–7 | 0–7 | 136 (128–144) / 59 | **2–7** | start-dependent | 38% of 16 | 3, 4, 5 |" in text
    assert "| 1 | not run yet | not run yet | locate not run yet |" in text and "| 2–7 | 6 | 140 | yes |" in text
    assert "baseline 59): 8–15: 40 (33–47)" in text


def test_cells_of_two_reference_builds_never_mix(tmp_path, monkeypatch, tiny_model_dir):
    """The first build a seed's cells use is recorded; a rebuild with other weights (other packages, other
    kernels) stops the study with a one-line reason instead of adding cells of another model to the grid."""
    import shutil

    import auditor.io.models as models
    from auditor.training.trainer import training_versions

    build = tmp_path / "ref"
    shutil.copytree(tiny_model_dir, build)
    (build / "safety_audit.json").write_text(json.dumps({"versions": training_versions()}))
    monkeypatch.setattr(models, "reference_dir", lambda seed=0, recipe="r5": build)
    _study_at(monkeypatch, tmp_path / "study")
    monkeypatch.setattr(study_tables, "STUDY", tmp_path / "study")
    assert study.reference_build(0)[0] == build and study.reference_build(0)[0] == build  # recorded, then recognised
    first = json.loads(study_grid.ACTIVE.references.read_text())["0"]["sha256"]
    weights = next(build.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # another build of the same seed
    with pytest.raises(SystemExit, match=f"reference seed 0 .* came from \\({first[:12]}.*with --sibling"):
        study.reference_build(0)
    record = json.loads(study_grid.ACTIVE.references.read_text())["0"]
    assert record["sha256"] == first and [t["sha256"] == first for t in record["not_reproduced"]] == [False]
    with pytest.raises(SystemExit):
        study.reference_build(0)  # the same failed rebuild is recorded once
    assert len(json.loads(study_grid.ACTIVE.references.read_text())["0"]["not_reproduced"]) == 1
    # --sibling: that build's cells go to a folder of their own, which the tables never read
    monkeypatch.setattr(study, "_eval", lambda model, cell: ({"harmful_rate": {"value": 0.5}}, [{"metric": "harmful", "prompt": "p", "response": COMPLY}]))
    r = study.run_cell(study_grid.Cell("none", "none"), sibling=True)
    other = r["reference_sha256"]
    assert other != first and other == study.reference_build(0, sibling=True)[1]
    assert (study_grid.ACTIVE.folder / f"sibling-{other[:8]}" / "none-none-ref0-ft0.json").is_file()
    assert not study_grid.finished(study_grid.Cell("none", "none")) and "none-none-ref0-ft0" not in study_tables._load()
    assert study_grid.finished(study_grid.Cell("none", "none"), rebuilds=True)  # `--sibling` alone does not run it on a third build
    monkeypatch.setattr(study, "_eval", lambda model, cell: pytest.fail("a finished cell was run again"))
    assert study.run_cell(study_grid.Cell("none", "none"), sibling=True) == r


def test_a_build_records_what_tells_cpus_and_training_data_apart(tmp_path, monkeypatch):
    """Every AMD machine of this kind calls itself "AMD EPYC": a build (and a failed rebuild) keeps the CPU's family,
    model, stepping and microcode, and the digests of the rows it trained on, so the next mismatch can be placed."""
    ident = study_builds.cpu_id()
    if Path("/proc/cpuinfo").is_file():
        assert {"vendor_id", "cpu family", "model"} <= set(ident) and all(ident.values())
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "safety_audit.json").write_text(json.dumps({"data": {"sha256": {"refusal": "ab", "benign": "cd"}}}))
    assert study_builds.data_digests(ref) == {"refusal": "ab", "benign": "cd"}
    (ref / "safety_audit.json").write_text("{}")
    assert study_builds.data_digests(ref) == {}


def test_other_packages_stop_the_study_before_any_rebuild(tmp_path, monkeypatch):
    """A fresh machine with newer transformers would rebuild seed 0 for ~25 min into another model; the study
    names the differing package and the requirements file instead, before building anything."""
    import auditor.training.trainer as trainer
    import auditor.workflows.reference as reference

    _study_at(monkeypatch, tmp_path)
    study_grid.ACTIVE.references.write_text(json.dumps({"0": {"sha256": "ab", "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0"}}}))
    monkeypatch.setattr(reference, "build_reference", lambda cfg: pytest.fail("rebuilt with other packages"))
    monkeypatch.setattr(trainer, "training_versions", lambda: {"torch": "2.13.0+cpu", "transformers": "5.30.1", "peft": "1"})
    with pytest.raises(SystemExit, match=r"transformers 5\.30\.1 \(recorded 5\.24\.0\).*requirements\.txt"):
        study.reference_build(0)
    monkeypatch.setattr(trainer, "training_versions", lambda: {"torch": "2.13.0+cpu", "transformers": "5.24.0"})
    study_builds.check_packages(0)  # the recorded ones: no complaint
    study_builds.check_packages(1)  # a seed not built yet records whatever is installed


def test_the_requirements_file_pins_what_every_recorded_build_came_from():
    pins = dict(line.split("==") for line in study_builds.REQUIREMENTS.read_text().splitlines() if "==" in line and line[0] != "#")
    for seed, build in json.loads(study_grid.ACTIVE.references.read_text()).items():
        for name in study_builds.PINNED:
            assert pins[name] == build["versions"][name].split("+")[0], (seed, name)


def test_each_target_gets_its_verdict_from_the_pooled_test(tmp_path, monkeypatch):
    """Held, failed (significant the other way) or open, from the finished cells; utility checked against 0.02."""
    monkeypatch.setattr(study_tables, "STUDY", tmp_path)
    for seed in (0, 1):  # D_N: SPPFT better on both seeds, utility within 0.02
        _plant(tmp_path, study_grid.Cell("normal", "full", ft_seed=seed), [i < 6 for i in range(40)], 0.15, 0.28, 0.25)
        _plant(tmp_path, study_grid.Cell("normal", "sppft", ft_seed=seed), [False] * 40, 0.0, 0.27, 0.24)
    _plant(tmp_path, study_grid.Cell("implicit", "full"), [False] * 40, 0.0, 0.28, 0.25)  # D_I: SPPFT worse, Rouge-L down 0.05
    _plant(tmp_path, study_grid.Cell("implicit", "sppft"), [i < 10 for i in range(40)], 0.25, 0.23, 0.25)
    _plant(tmp_path, study_grid.Cell("normal", "freeze-block"), [i < 2 for i in range(40)], 0.05)  # 2 vs 0: not significant
    lines = study_tables.targets(study_tables.paired(study_tables._load()))
    assert lines[0].startswith("- SPPFT's R_h below full fine-tuning's on D_N: **holds** so far (2 of 3 seeds")
    assert "only under sppft 0, only under full 12, p = 0.00049); Rouge-L and MMLU within 0.02 of full FT's: yes" in lines[0]
    _plant(tmp_path, study_grid.Cell("normal", "full", ft_seed=2), [i < 6 for i in range(40)], 0.15, 0.28, 0.25)
    _plant(tmp_path, study_grid.Cell("normal", "sppft", ft_seed=2), [False] * 40, 0.0, 0.27, 0.24)
    lines = study_tables.targets(study_tables.paired(study_tables._load()))  # every planned seed run: a final verdict
    assert lines[0].startswith("- SPPFT's R_h below full fine-tuning's on D_N: **holds** (3 of 3 seeds")
    assert "only under sppft 0, only under full 18, p = 7.6e-06); Rouge-L and MMLU within 0.02 of full FT's: yes" in lines[0]
    assert "on D_I: **fails: significantly the other way** so far (1 of 3 seeds" in lines[1]
    assert "within 0.02 of full FT's: **no** (Δ -0.050, +0.000)" in lines[1]
    assert "(the paper's ablation): open: no significant difference so far (1 of 3 seeds" in lines[2]
    assert lines[3].endswith("on D_I: not run yet.")



def test_replication_pairs_each_build_s_own_range_with_full_fine_tuning(tmp_path, monkeypatch):
    """Per build: SPPFT on the range its own localization recommends against full FT on D_N; the common layers."""
    _study_at(monkeypatch, tmp_path)
    monkeypatch.setattr(study_tables, "STUDY", tmp_path)
    for ref in (1, 2):
        rng = [7, 14] if ref == 1 else [9, 12]
        study_grid.Localization(ref).locate_json.write_text(json.dumps({"stability": {"recommended": {"range": rng}}}))
    _plant(tmp_path, study_grid.Cell("normal", "full", ref_seed=1), [i < 12 for i in range(40)], 0.3, 0.28, 0.25)
    _plant(tmp_path, study_grid.Cell("normal", "sppft", ref_seed=1), [False] * 40, 0.0, 0.27, 0.25)
    _plant(tmp_path, study_grid.Cell("normal", "full", ref_seed=2), [i < 2 for i in range(40)], 0.05)
    _plant(tmp_path, study_grid.Cell("normal", "sppft", ref_seed=2), [False] * 40, 0.0)
    results = study_tables._load()
    lines = study_tables.replication(results, study_tables.paired(results))
    assert lines[0] == "- reference build 0, SPPFT [5, 12] against full fine-tuning on D_N: not run yet."
    assert lines[1].startswith("- reference build 1, SPPFT [7, 14] against full fine-tuning on D_N: **holds** (R_h 0.000 vs 0.300;")
    assert "only under sppft 0, only under full 12, p = 0.00049; Δ Rouge-L -0.010, Δ MMLU +0.000)" in lines[1]
    assert lines[2].startswith("- reference build 2, SPPFT [9, 12] against full fine-tuning on D_N: open: no significant difference")
    assert lines[3] == "- layers inside every build's recommended range (5–12, 7–14, 9–12): 9–12."


def test_a_rebuild_is_localized_into_its_own_folder_and_its_table_row_says_so(tmp_path, monkeypatch):
    """On a fresh machine the seed's build is another one: `--sibling` localizes that build into its own folder, as
    its cells; it never becomes the recorded build's localization, and the table marks it (the recorded one wins)."""
    recorded, other = "f" * 64, "abcd1234" + "0" * 56
    _study_at(monkeypatch, tmp_path)
    monkeypatch.setattr(study_builds, "recorded_builds", lambda: {"0": {"sha256": recorded}})
    monkeypatch.setattr(study, "reference_build", lambda seed, sibling=False: (tmp_path / "ref", other if sibling else recorded))
    stability = {"recommended": {"range": [24, 27], "share": 0.5}, "verdict": "stable", "consensus_layers": [24, 25],
                 "runs": [{}] * 12, "starts": [{"label": "survey"}], "resamples": 3, "alpha": 0.8,
                 "ends": [{"range": [24, 27], "runs": 6, "count": 167, "as_good_as_best": True}]}
    commands = []

    def cli(cmd, check):  # what the CLI writes: the scan, then locate
        commands.append(cmd)
        out = {"initial_range": [20, 21]} if cmd[3] == "scan" else {
            "start": [25, 26], "safety_layers": [24, 27], "count": 167, "baseline": 428, "stability": stability,
            "sweep": [{"range": [24, 27], "count": 167, "ci95": [150, 184]}]}
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(out))

    monkeypatch.setattr("subprocess.run", cli)
    loc = study_grid.Localization(0)
    assert not study_grid.finished(loc, rebuilds=True)
    study.run_localization(loc, sibling=True)
    folder = tmp_path / f"{study_grid.REBUILD}abcd1234"
    assert sorted(p.name for p in folder.iterdir()) == ["localization-ref0.locate.json", "localization-ref0.scan.json"]
    assert [c[3] for c in commands] == ["scan", "locate"] and all(str(folder) in " ".join(c) for c in commands)
    assert not study_grid.finished(loc) and study_grid.finished(loc, rebuilds=True)  # `--sibling` alone will not run it again
    text = "\n".join(study_tables.localization((0,), tmp_path, rebuilds=True))
    assert "| 0 (rebuild abcd1234) | 20–21 |" in text and "| **24–27** | stable | 50% of 12 |" in text
    assert "Reference seed 0 (rebuild abcd1234): where the 12 searches ended" in text
    assert "| 0 | not run yet | not run yet | locate not run yet |" in "\n".join(study_tables.localization((0,), tmp_path))
    study.run_localization(loc)  # the recorded build's own, once it runs, is the one shown
    assert "| 0 | 20–21 |" in "\n".join(study_tables.localization((0,), tmp_path, rebuilds=True))


def test_a_rebuild_s_cells_pair_within_it_and_are_compared_cell_by_cell_with_other_builds(tmp_path, monkeypatch):
    """`study.py --sibling` cells: never grid cells; a pair comes from one build only (the recorded one's when it has
    both, else a rebuild's), and each rebuild's cell sits beside the same cell on the recorded or an earlier build."""
    _study_at(monkeypatch, tmp_path)
    monkeypatch.setattr(study_tables, "STUDY", tmp_path)
    intel, amd = ({"machine": {"cpu": {"model": m}}} for m in ("Intel(R) Xeon(R)", "AMD EPYC"))
    a, b = tmp_path / "sibling-aaaa1111", tmp_path / "sibling-bbbb2222"
    full, sppft = study_grid.Cell("normal", "full"), study_grid.Cell("normal", "sppft")
    full1, sppft1 = study_grid.Cell("normal", "full", ft_seed=1), study_grid.Cell("normal", "sppft", ft_seed=1)
    _plant(tmp_path, full, [i < 10 for i in range(40)], 0.25, 0.28)  # recorded: full only at ft 0; both at ft 1
    _plant(tmp_path, full1, [i < 3 for i in range(40)], 0.075)
    _plant(tmp_path, sppft1, [False] * 40, 0.0)
    _plant(a, full, [i < 12 for i in range(40)], 0.30, 0.27, **intel)
    _plant(a, sppft, [False] * 40, 0.0, 0.27, **intel)
    _plant(a, full1, [i < 20 for i in range(40)], 0.5, **intel)  # the recorded build has this pair: never used
    _plant(a, sppft1, [False] * 40, 0.0, **intel)
    _plant(b, sppft, [i < 1 for i in range(40)], 0.025, **amd)
    results = study_tables._load()
    assert set(results) == {full.id, full1.id, sppft1.id}
    rows = study_tables.paired(results)[("normal", "sppft", "full", 0)]
    assert [(r.a.ft_seed, r.build, r.only_b) for r in rows] == [(0, "aaaa1111", 12), (1, None, 3)]
    text = study_tables.section()
    assert "| normal | sppft vs full | ref 0 ft 0 (rebuild aaaa1111) | 0.000 | 0.300 | 0 | 12 | 0.00049 | +0.000 | – |" in text
    assert "| normal | sppft vs full | **ref 0 pooled (2)** | | | 0 | 15 |" in text
    assert f"Cells finished: **3 of {len(study_grid.grid())}** on the recorded builds" in text
    assert "and 1 more only on a rebuild (marked; `--sibling`)." in text
    assert "| normal | sppft [5, 12] | 0 | 0 (rebuild aaaa1111) | 0.000 | -0.010–0.010 |" in text
    assert "| normal | sppft [5, 12] | 0 | 0 (rebuild bbbb2222) | 0.025 |" in text
    sib = "\n".join(study_tables.siblings(results))
    assert "Rebuild aaaa1111… (Intel(R) Xeon(R); `benchmarks/study/results/sibling-aaaa1111/`)" in sib
    assert "| normal-full-ref0-ft0 | recorded | 38 of 40 | 0.250 → 0.300 | 0 | 2 | 0.5 | 0.020 → 0.020 | – → – | 0.280 → 0.270 | – → – |" in sib
    assert f"| {sppft.id} | aaaa1111 | 39 of 40 | 0.000 → 0.025 | 0 | 1 | 1 |" in sib  # no recorded cell: the earlier rebuild's


def test_a_rebuild_from_scratch_says_which_known_build_it_is(tmp_path, monkeypatch, tiny_model_dir, capsys):
    """`--rebuild SEED` answers whether machines of one CPU round alike: a from-scratch build identical to an earlier
    rebuild is kept with it (`rebuilt_identically`, with this machine's CPU); a cached build is never built over."""
    import shutil

    import auditor.io.models as models
    import auditor.workflows.reference as reference
    from auditor.training.trainer import training_versions

    build, weights = tmp_path / "ref", {"bytes": None}

    def build_reference(cfg):  # the same weights every time, as one machine's rounding would give
        shutil.copytree(tiny_model_dir, build)
        (build / "safety_audit.json").write_text(json.dumps({"versions": training_versions()}))
        if weights["bytes"] is not None:
            next(build.glob("*.safetensors")).write_bytes(weights["bytes"])

    monkeypatch.setattr(models, "reference_dir", lambda seed=0, recipe="r5": build)
    monkeypatch.setattr(reference, "build_reference", build_reference)
    _study_at(monkeypatch, tmp_path)
    assert "now its recorded build" in study_builds.rebuild(0)
    with pytest.raises(SystemExit, match="already in .*move it aside"):
        study_builds.rebuild(0)
    shutil.rmtree(build)
    assert study_builds.rebuild(0).endswith("the recorded build")
    assert len(json.loads(study_grid.ACTIVE.references.read_text())["0"]["rebuilt_identically"]) == 1
    w = next(tiny_model_dir.glob("*.safetensors")).read_bytes()
    weights["bytes"] = w[:-1] + bytes([w[-1] ^ 1])  # this machine rounds otherwise
    for expect in ("another build", "the rebuild of "):
        shutil.rmtree(build)
        assert expect in study_builds.rebuild(0)
    record = json.loads(study_grid.ACTIVE.references.read_text())["0"]
    (other,) = record["not_reproduced"]
    assert other["rebuilt_identically"][0]["cpu_id"] == study_builds.cpu_id() and len(record["rebuilt_identically"]) == 1


def test_the_pace_times_a_cell_by_finished_cells_of_its_own_recipe_and_data_when_there_are_any(tmp_path, monkeypatch):
    """The authors' recipe on D_B trains on twice D_I's rows and evaluates one set more: the recipe's median over
    D_I cells would promise a D_B cell in half its time."""
    _study_at(monkeypatch, tmp_path)
    for cell, train, ev in ((study_grid.Cell("implicit", "full", recipe="paper"), 2400, 1200),
                            (study_grid.Cell("implicit", "sppft", recipe="paper"), 2400, 1200),
                            (study_grid.Cell("backdoor", "full", recipe="paper"), 4800, 1800)):
        (tmp_path / f"{cell.id}.json").write_text(json.dumps({"train": {"seconds": train}, "seconds": {"eval": ev},
                                                              "recipe": "paper", "cell": asdict(cell)}))
    assert study.pace([study_grid.Cell("backdoor", "sppft", recipe="paper")]).startswith("to do: 1 cells, ~1.8 h")
    assert study.pace([study_grid.Cell("implicit", "full", recipe="paper", ft_seed=1)]).startswith("to do: 1 cells, ~1.0 h")
    # paper-steps is paper's compute in smaller batches: timed by the finished paper cell of its data
    assert study.pace([study_grid.Cell("backdoor", "sppft", recipe="paper-steps")]).startswith("to do: 1 cells, ~1.8 h")
    # a recipe never finished on any data falls back to every recipe's median (2400 s), its data's eval (1800 s)
    assert study.pace([study_grid.Cell("backdoor", "full", recipe="ours")]).startswith("to do: 1 cells, ~1.2 h")
