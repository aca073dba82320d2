"""The study (issue 17): does SPPFT keep the reference model safe, against its alternatives, over seeds?

A declared grid of cells; each cell = (reference seed, fine-tuning seed, method, frozen range, data) ->
`harden` the reference model -> `eval` it (chat template, keyword classifier: R_h on AdvBench-eval 260 ×
128 tokens, XSTest-safe and D_o over-refusal, Rouge-L on alpaca-eval, MMLU) with every response saved.
A finished cell is a small JSON under benchmarks/study/results/ (its responses gzipped beside it, for the
paired tests); a re-run skips finished cells, so the grid runs in pieces over days, in `plan`'s order.
`benchmarks/study/study_tables.py` turns the files into docs/study.md's tables (no hand-copied numbers).

    python benchmarks/study/study.py                # run every unfinished cell, in order (hours each on 2 cores)
    python benchmarks/study/study.py --list         # the grid and what is finished
    python benchmarks/study/study.py --only ID ...  # some cells
    python benchmarks/study/study.py --max-cells 1  # one more cell, then stop
    python benchmarks/study/study.py --sibling      # the unfinished cells and localizations on this machine's own rebuild, each
                                                    # with its pair's other cell: results/sibling-SHA8/
    python benchmarks/study/study.py --sibling --only ID ...  # these cells on it (a finished one too: to compare builds)
    python benchmarks/study/study.py --rebuild 2    # seed 2 from scratch here: the recorded build, an earlier rebuild, or new?

A rebuild of a seed on a fresh machine is, so far, always another build (rounding: seed 2 on an Intel Xeon and on a
second AMD EPYC, seed 0 on a third AMD EPYC: each gave one; seed 2 again on a CPU of the second's id: a third), so a grid cell pairs only with cells of its own build: study_tables takes each comparison's two
cells from the recorded build when it has both, else from one rebuild that has both (docs/METHOD.md §1.5).

Never beside a benchmark: it takes both cores for hours.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median

# The same kernels on every machine of this kind: torch's AVX-512 softmax rounds differently from its AVX2 one, so
# a reference build (and every cell) on an AVX-512 machine would not be the one an AVX2 machine builds. AVX2 is
# what all of them have (a rebuild on a fresh machine still differs: see the docstring). Set before torch loads; the
# subprocesses (scan, locate) inherit it. For the same reason
# every model runs in float32 (`--dtype auto` is bf16 on CPUs with native bf16 matmul).
# Only when run as the study: set on import, it would reach every process of a test run (torch's bf16 attention fails
# with it on AMX CPUs: auditor/backends/devices.py).
if __name__ == "__main__":
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")


from auditor.core.evidence import CLAIMS  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402

HERE = Path(__file__).resolve().parent
REBUILD = "sibling-"  # + a rebuild's SHA-256 prefix: the folder of the cells run on it
REQUIREMENTS = HERE / "requirements.txt"  # the exact packages those builds came from
PINNED = ("torch", "transformers", "peft")  # what a build records and the study checks before any work
LOCATED = ("sppft", "nfft")  # methods whose range is the build's located one (NFFT: as many parameters, as neurons)
ROWS, EPOCHS, LR = 400, 1.0, 1e-4  # our fine-tuning recipe; `--compat paper` cells take the authors' (training/paper.py)
# "paper-steps": the authors' recipe with their number of optimizer steps. On the bundled 697 D_I training rows their
# batch of 128 makes 18 steps, all inside their 100 warm-up steps (peak lr 5.4e-6); a batch of 24 (4 x 6) makes 90,
# peaking at 2.7e-5, as theirs do on 4,000 rows (~94 steps, 2.8e-5). Same rows, epochs and compute; one deviation.
STEPS_MATCHED_ACCUM = 6


@dataclass(frozen=True)
class Setup:
    """One reference recipe's study: its own folder (cells of two reference recipes never pair), what its cells
    freeze and which harmful sets they are measured on."""

    recipe: str
    folder: Path
    sppft_range: tuple[int, int]  # reference seed 0's located range (other seeds: their own localization's)
    freeze_block: tuple[int, int]  # the paper's ablation: an equal-width block that locate's controls say is not one
    harmful: tuple[str, ...]  # eval --harmful; a backdoor cell adds the triggered goals
    paper_template: str = "alpaca"  # what the authors'-recipe cells train and are evaluated in


# r4: frozen ranges from localization-ref0 (`locate --survey` on the full D_o with 3 more starts x 4 samples of D_o)
# on the current build of seed 0. SPPFT: its recommendation, [5, 12] (629 of 731 refused at alpha 1.2, baseline 190;
# the end of 6 of 16 searches). Freeze block: [21, 28] refuses 150 (below the baseline), where [13, 20] right after
# the range refuses 367. (An earlier build of seed 0 recommended [6, 13]: results/earlier-build-4846cc2a/.)
# r5: `locate --survey` on the full D_o (benchmarks/results/reference/r5-seed0-locate.json): baseline 428 refused,
# alpha 0.8 (scaling down is the lever), [24, 27] refuses 167 and stands out from every equal-width control; of
# those, [0, 3] is the one whose scaling changes nothing (438, change CI -24..45): the freeze block. r5's stability
# analysis (rebuild 4882161b) is start-dependent: the late starts end at [24, 27]/[25, 28]/[24, 28] (8 of 12), the
# middle start at [0, 14], which scaled by 0.8 stops refusing AdvBench-eval too (175 of 260 refused, [24, 27]: 247;
# scaled_refusals.py): a blunt minimum, not a safety range. The cells keep [24, 27].
# r5's authors'-recipe cells train and are evaluated in the chat template (`harden --compat paper --template chat`):
# r5 as built answers 48.5% of AdvBench-eval in the alpaca template (none-none-ref0-ft0-paper) against 0.4% in chat,
# its refusals live in the template it was aligned in, so only there can fine-tuning be seen to take safety away.
SETUPS = {
    "r4": Setup("r4", HERE / "results", (5, 12), (21, 28), ("advbench-eval", "xstest-unsafe")),
    "r5": Setup("r5", HERE / "results-r5", (24, 27), (0, 3), ("advbench-eval", "xstest-unsafe", "advbench-eval-rephrased"),
                "chat"),
}


def use_recipe(name: str) -> Setup:
    """Point the study at one reference recipe's cells (r4: the committed record; r5: the reference now)."""
    global SETUP, RECIPE, STUDY, REFERENCES, SPPFT_RANGE, FREEZE_BLOCK
    SETUP = SETUPS[name]
    RECIPE, STUDY, SPPFT_RANGE, FREEZE_BLOCK = SETUP.recipe, SETUP.folder, SETUP.sppft_range, SETUP.freeze_block
    REFERENCES = STUDY / "references.json"  # per reference seed: the build (SHA-256 of its HF folder) the cells came from
    return SETUP


use_recipe("r4")  # the default: the committed grid; `--recipe r5` switches


@dataclass(frozen=True)
class Cell:
    data: str  # normal (D_N) | implicit (D_I) | backdoor (D_B) | harmful (D_H, p = 0.1) | none (the reference as built)
    method: str  # full | sppft | freeze-block | nfft | lisa | none
    ref_seed: int = 0
    ft_seed: int = 0
    recipe: str = "ours"  # ours (ROWS, EPOCHS, LR, chat template) | paper (`harden --compat paper`, every D_I/D_B row)
    #                       | paper-steps (the authors' with --grad-accum STEPS_MATCHED_ACCUM: their number of steps)
    reference: str = "r4"  # the reference recipe (SETUPS): what the located range and the freeze block are
    template: str = ""  # trained and evaluated in; "" = the recipe's own: chat for ours, alpaca for the authors'

    def __post_init__(self):
        if not self.template:
            object.__setattr__(self, "template", self.own_template)

    @property
    def own_template(self) -> str:
        """The recipe's template: the authors' recipe trains in the alpaca template, and they evaluate in it."""
        return "alpaca" if self.authors else "chat"

    @property
    def authors(self) -> bool:
        """Trained by `harden --compat paper` (as theirs, or with their number of steps)."""
        return self.recipe in ("paper", "paper-steps")

    @property
    def grad_accum(self) -> int | None:
        """harden's --grad-accum: the steps-matched deviation, or None (the recipe's own)."""
        return STEPS_MATCHED_ACCUM if self.recipe == "paper-steps" else None

    @property
    def layers(self) -> tuple[int, int] | None:
        if self.method in LOCATED:
            return located_range(self.ref_seed, self.reference)
        return SETUPS[self.reference].freeze_block if self.method == "freeze-block" else None

    @property
    def id(self) -> str:
        layers = self.layers
        rng = f"-{layers[0]}-{layers[1]}" if layers else "-located" if self.method in LOCATED else ""
        return (f"{self.data}-{self.method}{rng}-ref{self.ref_seed}-ft{self.ft_seed}" + (f"-{self.recipe}" if self.authors else "")
                + (f"-{self.template}" if self.template != self.own_template else ""))


def located_range(ref_seed: int, reference: str = "r4") -> tuple[int, int] | None:
    """SPPFT's frozen range on a reference build. Seed 0's is fixed above (SPPFT_RANGE); another build's is what its
    own localization recommends, as a user would run `locate` and then `harden` (None until that has run): the
    replication tests the method on each build, not seed 0's layers on another model."""
    if ref_seed == 0 or reference != "r4":  # r5's grid has reference seed 0 only
        return SETUPS[reference].sppft_range
    loc = Localization(ref_seed).locate_json
    return tuple(json.loads(loc.read_text())["stability"]["recommended"]["range"]) if loc.is_file() else None


@dataclass(frozen=True)
class Localization:
    """Where are the reference build's safety layers? `scan --contrast bundled` (the differential range) and
    `locate --survey` with the stability analysis (4 starts × 4 samples of the full D_o, opening classifier)."""

    ref_seed: int = 0
    resamples: int = 3
    fixed_starts: tuple[str, ...] = ("11-12", "25-26")  # the hand-picked start of the README, a late block
    folder: Path | None = None  # where its files are: the study being run (STUDY) unless told

    @property
    def id(self) -> str:
        return f"localization-ref{self.ref_seed}"

    @property
    def scan_json(self) -> Path:
        return (self.folder or STUDY) / f"{self.id}.scan.json"

    @property
    def locate_json(self) -> Path:
        return (self.folder or STUDY) / f"{self.id}.locate.json"

    def starts(self, scan: dict) -> str:
        """The fixed starts and this build's own scan's initial range (its last two layers), so each build is searched
        from where its own scan points: seed 0's scan ended at 20, hence its recorded 11-12, 19-20, 25-26."""
        found = (scan.get("initial_range") or [None, None])[1]
        own = [f"{max(found - 1, 0)}-{found}"] if found is not None else []
        return ",".join(sorted({*self.fixed_starts, *own}, key=lambda s: int(s.split("-")[0])))

    def scan_command(self, model: str) -> list[str]:
        return ["scan", model, "--backend", "torch", "--dtype", "float32", "--template", "chat", "--contrast", "bundled",
                "--json", str(self.scan_json), "--plot", str(self.scan_json.with_suffix(".png")), "--force", "-q"]

    def locate_command(self, model: str, scan: dict) -> list[str]:
        return ["locate", model, "--backend", "torch", "--dtype", "float32", "--template", "chat", "--survey",
                "--classifier", "opening", "--limit", "0", "--starts", self.starts(scan), "--resamples", str(self.resamples),
                "--json", str(self.locate_json), "--plot", str(self.locate_json.with_suffix(".png")), "--force", "-q"]


def plan() -> list:
    """Everything the study runs, in run order: each reference build's localization before its first cell, and the
    third fine-tuning seed last. Seeds 0 and 1 already decided both pooled SPPFT tests (p <= 5e-7, one each way), so
    a third seed can confirm them but hardly turn them; the baselines, the harmful data and the other reference
    builds have no evidence at all until they run."""
    cells = grid()
    if RECIPE != "r4":  # r5: the questions of issue 38 in the order they are answered, then the stability analysis of
        cells = sorted(cells, key=r5_priority)  # r5's localization (its cells freeze the survey's range, declared above)
        first = sum(c.ft_seed == 0 for c in cells)
        return cells[:first] + [Localization(0)] + cells[first:]
    order, out = [c for c in cells if c.ft_seed < 2] + [c for c in cells if c.ft_seed == 2], []
    for cell in order:
        if not any(isinstance(x, Localization) and x.ref_seed == cell.ref_seed for x in out):
            out.append(Localization(cell.ref_seed))
        out.append(cell)
    return out


def r5_priority(cell: Cell) -> tuple:
    """r5's run order: does SPPFT's failure on D_I survive a reference whose safety generalizes (seed 0 pair), then
    the authors' recipe (its reference, then the pair), then D_N, the reference as built, D_B, the freeze block and
    the further seeds: each question gets a first answer before any gets a second seed."""
    first = [("implicit", "full", "ours"), ("implicit", "sppft", "ours"), ("none", "none", "paper"),
             ("implicit", "full", "paper"), ("implicit", "sppft", "paper"), ("normal", "full", "ours"),
             ("normal", "sppft", "ours"), ("none", "none", "ours"), ("backdoor", "full", "paper"),
             ("backdoor", "sppft", "paper")]
    key = (cell.data, cell.method, cell.recipe)
    return (cell.ft_seed, first.index(key) if key in first else len(first))


def grid() -> list[Cell]:
    """The declared grid, in reading order (the tables): r4's the seed-0 comparison, more seeds, the baselines,
    the harmful data, replication on reference builds 1 and 2; r5's `r5_grid`. `plan` gives the run order."""
    if RECIPE != "r4":
        return r5_grid()
    return r4_grid()


def r4_grid() -> list[Cell]:
    cells = [Cell("none", "none")]
    for seed in (0, 1, 2):
        for data in ("normal", "implicit"):
            cells += [Cell(data, m, 0, seed) for m in ("full", "sppft", "freeze-block")]
    cells += [Cell(d, m) for d in ("normal", "implicit") for m in ("nfft", "lisa")]
    cells += [Cell("harmful", m) for m in ("full", "sppft", "lisa")]
    for ref in (1, 2):  # replication across reference builds
        cells += [Cell("none", "none", ref)] + [Cell("normal", m, ref) for m in ("full", "sppft")]
    return cells


def r5_grid() -> list[Cell]:
    """Issue 38's re-test on r5: full, SPPFT and the freeze block on D_N and D_I over 3 fine-tuning seeds (our
    recipe); full and SPPFT on D_I (2 seeds) and D_B (1 seed) under the authors' recipe in r5's chat template (Setup
    r5), and on D_I (2 seeds) with their number of optimizer steps (paper-steps: at their batch of 128 the bundled
    rows give 18 steps, which eroded nothing); the reference as built is the baseline, in chat and in their alpaca
    template."""
    cells = [Cell("none", "none", reference="r5"), Cell("none", "none", recipe="paper", reference="r5")]
    for seed in (0, 1, 2):
        cells += [Cell(d, m, 0, seed, reference="r5") for d in ("normal", "implicit") for m in ("full", "sppft", "freeze-block")]
    chat = SETUPS["r5"].paper_template  # where r5's refusals live (Setup r5); the reference in alpaca stays measured
    cells += [Cell("implicit", m, 0, seed, "paper", "r5", chat) for seed in (0, 1) for m in ("full", "sppft")]
    cells += [Cell("backdoor", m, 0, 0, "paper", "r5", chat) for m in ("full", "sppft")]
    return cells + [Cell("implicit", m, 0, seed, "paper-steps", "r5", chat) for seed in (0, 1) for m in ("full", "sppft")]


def _harden(cell: Cell, ref_dir: Path, out: Path) -> dict:
    from auditor.workflows.harden import HardenConfig, run_harden

    resume = out.with_name(out.name + ".checkpoints").is_dir()
    if cell.authors:  # every bundled row; --layers as their freezing code reads it (begin < l < end)
        layers = (cell.layers[0] - 1, cell.layers[1] + 1) if cell.layers else None
        cfg = HardenConfig(out=str(out), model=str(ref_dir), method=cell.method, layers=layers, attack=cell.data,
                           compat="paper", template=cell.template, seed=cell.ft_seed, grad_accum=cell.grad_accum, resume=resume,
                           force=True)
    else:
        cfg = HardenConfig(out=str(out), model=str(ref_dir), method=cell.method, layers=cell.layers, attack=cell.data,
                           p=0.1, n_rows=ROWS, template="chat", epochs=EPOCHS, lr=LR, seed=cell.ft_seed,
                           resume=resume, force=True)
    return run_harden(cfg)


def harmful_sets(cell: Cell) -> tuple[str, ...]:
    """What R_h is measured on: the setup's sets, and for a backdoor cell the same goals with the trigger."""
    from auditor.io.prompts import TRIGGERED

    return SETUPS[cell.reference].harmful + ((TRIGGERED,) if cell.data == "backdoor" else ())


def _eval(model: Path, cell: Cell) -> tuple[dict, list[dict]]:
    from auditor.workflows.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(model=str(model), backend="torch", dtype="float32", template=cell.template,
                     metrics=("harmful", "over-refusal", "rouge", "mmlu"), harmful=harmful_sets(cell),
                     max_new_tokens=128, keep_responses=True)
    return run_eval(cfg), cfg.saved


def run_cell(cell: Cell, keep: bool = False, sibling: bool = False) -> dict:
    """One cell on the seed's recorded build, into STUDY. `sibling`: on this machine's own build of the seed when
    that is another one, into STUDY/sibling-SHA8/ (not a grid cell: the tables pair it only with that build's cells)."""
    from auditor.io.cache import cache_dir

    if cell.method in LOCATED and cell.layers is None:
        raise SystemExit(f"{cell.id}: reference seed {cell.ref_seed} is not localized yet (run localization-ref{cell.ref_seed})")
    ref_dir, sha = _reference(cell.ref_seed, sibling)
    out = build_folder(cell.ref_seed, sha)
    if (out / f"{cell.id}.json").is_file() and (out / f"{cell.id}.responses.jsonl.gz").is_file():  # finished: never redone
        return json.loads((out / f"{cell.id}.json").read_text())
    work = cache_dir() / "study" / ("" if RECIPE == "r4" else RECIPE) / (cell.id if out == STUDY else f"{cell.id}-{sha[:8]}")
    t0 = time.perf_counter()
    train, model = None, ref_dir
    if cell.method != "none":
        model = work / "model"
        if not (model / "safety_audit.json").is_file():  # a killed cell resumes from its checkpoints
            work.mkdir(parents=True, exist_ok=True)
            _harden(cell, ref_dir, model)
        h = json.loads((model / "safety_audit.json").read_text())
        train = {k: h.get(k) for k in ("seconds", "steps", "train_loss", "frozen_fraction", "frozen", "hyperparameters",
                                          "resumed_from")}
        train["frozen"] = frozen_summary(train["frozen"])
    t1 = time.perf_counter()
    ev, responses = _eval(model, cell)
    settings = ({"rows": ROWS, "epochs": EPOCHS, "lr": LR, "template": "chat"} if cell.recipe == "ours" else
                {"compat": "paper", "rows": "all", "template": cell.template}  # the paper's: train.hyperparameters
                | ({"grad_accum": cell.grad_accum} if cell.grad_accum else {}))
    result = {"cell": asdict(cell), "id": cell.id, "layers": list(cell.layers) if cell.layers else None,
              "reference_sha256": sha, "reference_recipe": RECIPE,
              **({"recipe": settings} if RECIPE == "r4" else {"recipe": cell.recipe, "settings": settings}),
              "eval_template": cell.template, "train": train,
              "eval": {k: ev.get(k) for k in ("harmful_rate", "harmful_by_set", "over_refusal_by_set", "rouge_l",
                                              "mmlu_accuracy", "classifier", "max_new_tokens", "model_sha256")},
              "seconds": {"train": round(t1 - t0, 1), "eval": round(time.perf_counter() - t1, 1)},
              "machine": {"cpu": cpu_info(), "cpu_id": cpu_id(), "python": platform.python_version(),
                          "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY")}}
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / f"{cell.id}.responses.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in responses)
    (out / f"{cell.id}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not keep and cell.method != "none":
        shutil.rmtree(work, ignore_errors=True)
    return result


def build_folder(seed: int, sha: str) -> Path:
    """Where a build's cells and localization go: the study's folder for the seed's recorded build, a folder of its
    own (REBUILD + SHA8) for any other build."""
    return STUDY if sha == _recorded_builds()[str(seed)]["sha256"] else STUDY / f"{REBUILD}{sha[:8]}"


def frozen_summary(frozen: dict | None) -> dict | None:
    """What a cell froze, small enough to commit: NFFT's frozen neurons (every row index of every map, ~600 KB of
    JSON) become a row count per map and the SHA-256 of the full lists; whole-parameter lists stay as they are."""
    if not frozen or "rows" not in frozen:
        return frozen
    rows = frozen["rows"]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return {**frozen, "rows": {name: len(r) for name, r in rows.items()}, "rows_sha256": digest}


def _reference(seed: int, sibling: bool = False) -> tuple[Path, str]:
    """The reference build of this seed and its SHA-256, built (resumably, ~25 min) when it is not there yet, and
    checked against the build the study's cells of that seed came from (REFERENCES): cells of two different builds
    never mix. `sibling` accepts another build (recorded as not reproduced) for cells kept apart from the grid."""
    from auditor.io.models import reference_dir, resolve_model
    from auditor.workflows.reference import ReferenceConfig, build_reference

    _check_packages(seed)
    ref_dir = reference_dir(seed, RECIPE)
    built = not (ref_dir / "safety_audit.json").is_file()
    if built:
        print(f"   building reference seed {seed} (resumable)", flush=True)
        build_reference(ReferenceConfig(seed=seed, recipe=RECIPE))
    sha = resolve_model(str(ref_dir)).content_hash("torch")
    known = _recorded_builds()
    versions = json.loads((ref_dir / "safety_audit.json").read_text()).get("versions", {})
    if str(seed) not in known:
        known[str(seed)] = {"sha256": sha, "versions": versions, "cpu": cpu_info(), "cpu_id": cpu_id(),
                            "data_sha256": _data_digests(ref_dir), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY")}
        STUDY.mkdir(parents=True, exist_ok=True)
        REFERENCES.write_text(json.dumps(known, indent=2) + "\n")
    elif known[str(seed)]["sha256"] != sha:
        tried = known[str(seed)].setdefault("not_reproduced", [])
        same = [t for t in tried if t["sha256"] == sha]
        if not same:  # kept beside the build it failed to reproduce
            tried.append({"sha256": sha, **_this_machine(versions), "data_sha256": _data_digests(ref_dir)})
            REFERENCES.write_text(json.dumps(known, indent=2) + "\n")
        elif built:  # an earlier rebuild, made again from scratch here: which machines round alike
            _note_rebuilt(known, same[0], versions)
        if sibling:
            return ref_dir, sha
        rec = known[str(seed)]
        fix = ("install those versions and rebuild" if versions != rec["versions"] else
               "the packages are the same, the rounding is not (a fresh machine's rebuild so far always differs): run "
               "the cells on this build with --sibling (a comparison pairs cells of one build)")
        raise SystemExit(f"reference seed {seed} built here ({sha[:12]}, {versions}) is not the build the study's cells "
                         f"came from ({rec['sha256'][:12]}, {rec['versions']}; {REFERENCES}): "
                         f"{fix}, or move that seed's results aside to start it again")
    elif built:
        _note_rebuilt(known, known[str(seed)], versions)
    return ref_dir, sha


def _note_rebuilt(known: dict, build: dict, versions: dict) -> None:
    """A build made again from scratch came out identical: the machine is kept with it (`rebuilt_identically`), so
    the record says which CPUs round alike, not only which do not."""
    build.setdefault("rebuilt_identically", []).append(_this_machine(versions))
    REFERENCES.write_text(json.dumps(known, indent=2) + "\n")


def _this_machine(versions: dict) -> dict:
    """What a build made here is kept with: the packages, the CPU (and what tells CPUs of one name apart), the day."""
    return {"versions": versions, "cpu": cpu_info(), "cpu_id": cpu_id(), "date": time.strftime("%Y-%m-%d")}


def rebuild(seed: int) -> str:
    """`--rebuild SEED`: build the seed from scratch here and say which known build it is (the recorded one, an
    earlier rebuild, or a new one): ~25 min, no cells."""
    from auditor.io.models import reference_dir

    if (reference_dir(seed, RECIPE) / "safety_audit.json").is_file():
        raise SystemExit(f"a build of reference seed {seed} is already in {reference_dir(seed, RECIPE)}: move it aside to rebuild")
    first = str(seed) not in _recorded_builds()
    sha = _reference(seed, sibling=True)[1]
    rec = _recorded_builds()[str(seed)]
    same = [t for t in [rec, *rec.get("not_reproduced", [])] if t["sha256"] == sha][0]
    if same is rec:
        return f"reference seed {seed} {'built' if first else 'rebuilt'} here: {sha[:8]}, " + (
            "now its recorded build" if first else "the recorded build")
    ident = " ".join(f"{k} {v}" for k, v in same.get("cpu_id", {}).items() if k != "vendor_id")
    new = not same.get("rebuilt_identically")
    return (f"reference seed {seed} rebuilt here: {sha[:8]}, " + ("another build (not_reproduced in references.json)"
            if new else f"the rebuild of {same['date']} on {same['cpu']['model']} {ident}".rstrip()))


def _recorded_builds() -> dict:
    return json.loads(REFERENCES.read_text()) if REFERENCES.is_file() else {}


def cpu_id() -> dict:
    """What tells two CPUs of one model name apart ("AMD EPYC" on every AMD machine of this kind): the key to why a
    rebuild did not reproduce, kept with every build."""
    keys, found = ("vendor_id", "cpu family", "model", "stepping", "microcode"), {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            k, _, v = line.partition(":")
            if k.strip() in keys and k.strip() not in found:
                found[k.strip()] = v.strip()
            if len(found) == len(keys):
                break
    except OSError:
        pass
    return found


def _data_digests(ref_dir: Path) -> dict:
    """The SHA-256 of each kind of training row the build made: equal digests put a difference in the training,
    not in the self-distilled answers."""
    return json.loads((ref_dir / "safety_audit.json").read_text()).get("data", {}).get("sha256", {})


def _check_packages(seed: int) -> None:
    """Stop before a ~25 min rebuild or hours of cells when the installed packages are not the ones this seed's
    recorded build came from: with others, the rebuild is another model and its cells would not pair."""
    from auditor.training.trainer import training_versions

    want, have = _recorded_builds().get(str(seed), {}).get("versions", {}), training_versions()
    differ = [f"{k} {have.get(k)} (recorded {want[k]})" for k in PINNED if k in want and have.get(k) != want[k]]
    if differ:
        raise SystemExit(f"reference seed {seed}'s cells come from other packages than these: {', '.join(differ)}; "
                         f"install {REQUIREMENTS} (pip install -r) and run again")


def run_localization(loc: Localization, sibling: bool = False) -> None:
    """The scan, then the search from the starts it points to; a finished half is kept. `sibling`: on this
    machine's own build of the seed when that is another one, into its folder (as a cell's): the tables say so."""
    import subprocess

    ref_dir, sha = _reference(loc.ref_seed, sibling)
    model = f"reference:{RECIPE}" if loc.ref_seed == 0 else str(ref_dir)  # seed 0 by name (its GGUF twin for the contrast)
    loc = replace(loc, folder=build_folder(loc.ref_seed, sha))
    loc.locate_json.parent.mkdir(parents=True, exist_ok=True)
    if not loc.scan_json.is_file():
        subprocess.run([sys.executable, "-m", "auditor.cli", *loc.scan_command(model)], check=True)
    if not loc.locate_json.is_file():
        subprocess.run([sys.executable, "-m", "auditor.cli", *loc.locate_command(model, json.loads(loc.scan_json.read_text()))],
                       check=True)


def rebuild_folders(study: Path) -> list[Path]:
    """The folders of rebuilds' cells (`--sibling`), in name order: the order in which the tables prefer them."""
    return sorted(p for p in study.glob(f"{REBUILD}*") if p.is_dir())


PAIRED = set(CLAIMS)  # the comparisons (A, B) the tables make and harden reports, within one data, recipe and seed


def partners(cell: Cell) -> list[Cell]:
    """The grid's cells a comparison pairs with `cell`: the same data, recipe, seeds and template, a method compared
    with its own."""
    key = (cell.data, cell.recipe, cell.ref_seed, cell.ft_seed, cell.template)
    return [c for c in grid() if (c.data, c.recipe, c.ref_seed, c.ft_seed, c.template) == key
            and ((cell.method, c.method) in PAIRED or (c.method, cell.method) in PAIRED)]


def with_partners(todo: list) -> list:
    """`--sibling`'s work: each unfinished cell, followed by each of its partners that no rebuild has finished (one
    only the recorded build has cannot pair with a rebuild's cell: a pair takes both cells from one build). On a
    machine that builds the recorded reference such a partner is found finished and returns at once."""
    out: list = []
    for item in todo:
        out += [x for x in [item, *(partners(item) if isinstance(item, Cell) else [])]
                if x not in out and (x is item or finished_in(x, rebuilds=True) in (None, STUDY))]
    return out


def finished_in(item, rebuilds: bool = False) -> Path | None:
    """The folder holding the finished item: the recorded build's, or (`rebuilds`) the first rebuild's that has it."""
    for folder in [STUDY] + (rebuild_folders(STUDY) if rebuilds else []):
        if isinstance(item, Localization):
            loc = replace(item, folder=folder)
            if loc.locate_json.is_file() and loc.scan_json.is_file():
                return folder
        elif (folder / f"{item.id}.json").is_file() and (folder / f"{item.id}.responses.jsonl.gz").is_file():
            return folder
    return None


def finished(item, rebuilds: bool = False) -> bool:
    """On the recorded build; `rebuilds`: or on any rebuild (a cell --sibling need not run again on a third build).
    A session on a fresh machine should finish both cells of a pair: a pair never takes its cells from two builds."""
    return finished_in(item, rebuilds) is not None


def _recipe_of(result: dict) -> str:
    """A finished cell's recipe (r4's cells record their settings under "recipe", and all are ours)."""
    return result["recipe"] if isinstance(result.get("recipe"), str) else "ours"


def pace(todo: list) -> str:
    """What the rest will take, at the median pace of the finished cells of every build, fine-tuning timed per recipe
    (the authors' recipe trains 3 epochs on every row: several times ours). Medians: a run beside other work or a
    resumed harden records its own seconds, not the cell's."""
    done = [json.loads(p.read_text()) for f in [STUDY, *rebuild_folders(STUDY)] for p in sorted(f.glob("*-ref*-ft*.json"))]
    trains: dict[str, list[float]] = {}
    for r in done:
        if r.get("train") and not r["train"].get("resumed_from"):
            trains.setdefault(_recipe_of(r), []).append(r["train"]["seconds"])
    evals = [r["seconds"]["eval"] for r in done if r.get("seconds", {}).get("eval")]
    cells, locs = [c for c in todo if isinstance(c, Cell)], sum(isinstance(c, Localization) for c in todo)
    if not evals:
        return f"to do: {len(cells)} cells and {locs} localizations (no finished cell to time them by)"
    every = median(t for ts in trains.values() for t in ts) if trains else 0.0
    train = {recipe: median(ts) for recipe, ts in trains.items()}
    e = median(evals)
    hours = sum((e + (train.get(c.recipe, every) if c.method != "none" else 0.0)) for c in cells) / 3600
    harden = ", ".join(f"{t / 60:.1f} min" + (f" {recipe}" if len(train) > 1 else "") for recipe, t in sorted(train.items()))
    return (f"to do: {len(cells)} cells, ~{hours:.1f} h at the finished cells' median pace (harden {harden or '0.0 min'}, "
            f"eval {e / 60:.1f} min), and {locs} localization{'s' * (locs != 1)} (each after its reference build)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=sorted(SETUPS), default="r4", help="The reference recipe whose grid to run "
                    "(r4: the committed record; r5: the reference now, cells in results-r5/).")
    ap.add_argument("--list", action="store_true", help="Show the grid and which cells are finished.")
    ap.add_argument("--only", nargs="*", default=None, metavar="ID", help="Run only these cells.")
    ap.add_argument("--max-cells", type=int, default=None, help="Stop after N items (cells or localizations).")
    ap.add_argument("--keep", action="store_true", help="Keep the fine-tuned models (cache/study/ID/model).")
    ap.add_argument("--sibling", action="store_true", help="Run on this machine's own build of each seed when it is not "
                    "the recorded one, into results/sibling-SHA8/: the unfinished cells and localizations, or the --only ones.")
    ap.add_argument("--rebuild", type=int, default=None, metavar="SEED", help="Build reference seed SEED from "
                    "scratch here (~25 min) and say whether it is the recorded build, an earlier rebuild or a new one.")
    args = ap.parse_args()
    use_recipe(args.recipe)
    if args.rebuild is not None:
        print(rebuild(args.rebuild))
        return
    items = [c for c in plan() if args.only is None or c.id in args.only]
    if args.only and len(items) != len(args.only):
        raise SystemExit(f"unknown id among {args.only}; see --list")
    if args.sibling and args.only:  # those items even when the recorded build has them (to compare the builds)
        left = items
    elif args.sibling:  # an item one rebuild ran is done; a pair's other cell runs beside it on this build
        left = with_partners([c for c in items if not finished(c, rebuilds=True)])
    else:
        left = [c for c in items if not finished(c)]
    if args.list:
        for c in items:
            where = finished_in(c, rebuilds=True)
            on = f"  (finished on rebuild {where.name.removeprefix(REBUILD)})" if where not in (None, STUDY) else ""
            print(f"{'to do' if c in left else 'done '}  {c.id}{on}")
        print(f"{len(items) - len(left)}/{len(items)} finished")
        print(pace(left))
        return
    todo = left[: args.max_cells]
    print(f"{len(items) - len(left)}/{len(items)} finished; running {len(todo)}", flush=True)
    for c in todo:
        print(f"== {c.id}", flush=True)
        if isinstance(c, Localization):
            run_localization(c, args.sibling)
            continue
        r = run_cell(c, args.keep, args.sibling)
        print(f"   R_h {r['eval']['harmful_rate']['value']:.3f}  train {r['seconds']['train']:.0f} s  eval {r['seconds']['eval']:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
