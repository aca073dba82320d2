"""What the study runs (benchmarks/study/study.py): the reference recipes' setups, the grid of cells, the run order,
which cells a comparison pairs, and where a finished one is.

One setup is active at a time (`use_recipe`: r4, the committed record, unless `--recipe r5`); everything here that
needs a folder reads it from `ACTIVE`, so a test points the study elsewhere by replacing that one value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from auditor.core.evidence import CLAIMS

HERE = Path(__file__).resolve().parent
REBUILD = "sibling-"  # + a rebuild's SHA-256 prefix: the folder of the cells run on it
LOCATED = ("sppft", "nfft")  # methods whose range is the build's located one (NFFT: as many parameters, as neurons)
ROWS, EPOCHS, LR = 400, 1.0, 1e-4  # our fine-tuning recipe; `--compat paper` cells take the authors' (training/paper.py)
# "paper-steps": the authors' recipe with their number of optimizer steps, per data set (one deviation: the batch;
# the same rows, epochs and compute). At their batch of 128 the bundled rows make 18 steps of D_I and 36 of D_B, all
# inside their 100 warm-up steps. D_I: their 4,000 rows make ~93 steps (peak lr 2.8e-5); our 697 training rows at a
# batch of 24 (4 x 6) make 90 (2.7e-5). D_B: their 3,000 rows (2,900 after the validation split) make ~69 (2.1e-5);
# our 1,494 at a batch of 64 (4 x 16) make 72 (2.2e-5).
STEPS_MATCHED_ACCUM = {"implicit": 6, "backdoor": 16}


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

    @property
    def references(self) -> Path:
        """Per reference seed: the build (SHA-256 of its HF folder) the cells came from."""
        return self.folder / "references.json"


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

ACTIVE = SETUPS["r4"]  # the study being run: the committed grid unless `use_recipe` switches


def use_recipe(name: str) -> Setup:
    """Point the study at one reference recipe's cells (r4: the committed record; r5: the reference now)."""
    global ACTIVE
    ACTIVE = SETUPS[name]
    return ACTIVE

@dataclass(frozen=True)
class Cell:
    data: str  # normal (D_N) | implicit (D_I) | backdoor (D_B) | harmful (D_H, p = 0.1) | none (the reference as built)
    method: str  # full | sppft | freeze-block | nfft | lisa | none
    ref_seed: int = 0
    ft_seed: int = 0
    recipe: str = "ours"  # ours (ROWS, EPOCHS, LR, chat template) | paper (`harden --compat paper`, every D_I/D_B row)
    #                       | paper-steps (the authors' with --grad-accum STEPS_MATCHED_ACCUM[data]: their number of steps)
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
        return STEPS_MATCHED_ACCUM[self.data] if self.recipe == "paper-steps" else None

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
    """SPPFT's frozen range on a reference build. Seed 0's is its Setup's sppft_range; another build's is what its
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
    folder: Path | None = None  # where its files are: the study being run (ACTIVE) unless told

    @property
    def id(self) -> str:
        return f"localization-ref{self.ref_seed}"

    @property
    def scan_json(self) -> Path:
        return (self.folder or ACTIVE.folder) / f"{self.id}.scan.json"

    @property
    def locate_json(self) -> Path:
        return (self.folder or ACTIVE.folder) / f"{self.id}.locate.json"

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
    if ACTIVE.recipe != "r4":  # r5: the questions of issue 38 in the order they are answered, then the stability analysis of
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
    the further seeds: each question gets a first answer before any gets a second seed. Last, the second seed of the
    authors' recipe at their batch (18 steps of D_I), which at seed 0 eroded nothing."""
    first = [("implicit", "full", "ours"), ("implicit", "sppft", "ours"), ("none", "none", "paper"),
             ("implicit", "full", "paper"), ("implicit", "sppft", "paper"), ("normal", "full", "ours"),
             ("normal", "sppft", "ours"), ("none", "none", "ours"), ("backdoor", "full", "paper"),
             ("backdoor", "sppft", "paper")]
    key = (cell.data, cell.method, cell.recipe)
    return (cell.recipe == "paper" and cell.ft_seed > 0, cell.ft_seed, first.index(key) if key in first else len(first))


def grid() -> list[Cell]:
    """The declared grid, in reading order (the tables): r4's the seed-0 comparison, more seeds, the baselines,
    the harmful data, replication on reference builds 1 and 2; r5's `r5_grid`. `plan` gives the run order."""
    if ACTIVE.recipe != "r4":
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
    r5), and on D_I (2 seeds) and D_B (1 seed) with their number of optimizer steps (paper-steps: at their batch of
    128 the bundled rows give 18 and 36 steps, which eroded little or nothing); the reference as built is the
    baseline, in chat and in their alpaca template."""
    cells = [Cell("none", "none", reference="r5"), Cell("none", "none", recipe="paper", reference="r5")]
    for seed in (0, 1, 2):
        cells += [Cell(d, m, 0, seed, reference="r5") for d in ("normal", "implicit") for m in ("full", "sppft", "freeze-block")]
    chat = SETUPS["r5"].paper_template  # where r5's refusals live (Setup r5); the reference in alpaca stays measured
    cells += [Cell("implicit", m, 0, seed, "paper", "r5", chat) for seed in (0, 1) for m in ("full", "sppft")]
    cells += [Cell("backdoor", m, 0, 0, "paper", "r5", chat) for m in ("full", "sppft")]
    cells += [Cell("implicit", m, 0, seed, "paper-steps", "r5", chat) for seed in (0, 1) for m in ("full", "sppft")]
    return cells + [Cell("backdoor", m, 0, 0, "paper-steps", "r5", chat) for m in ("full", "sppft")]


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
                if x not in out and (x is item or finished_in(x, rebuilds=True) in (None, ACTIVE.folder))]
    return out


def finished_in(item, rebuilds: bool = False) -> Path | None:
    """The folder holding the finished item: the recorded build's, or (`rebuilds`) the first rebuild's that has it."""
    for folder in [ACTIVE.folder] + (rebuild_folders(ACTIVE.folder) if rebuilds else []):
        if isinstance(item, Localization):
            loc = replace(item, folder=folder)
            if loc.locate_json.is_file() and loc.scan_json.is_file():
                return folder
        elif cell_finished(folder, item.id):
            return folder
    return None


def responses_file(folder: Path, cell_id: str) -> Path:
    """Where a cell's saved responses are (every metric's prompts, gzipped JSON lines): the paired tests read them."""
    return folder / f"{cell_id}.responses.jsonl.gz"


def cell_finished(folder: Path, cell_id: str) -> bool:
    """A cell is finished in a folder when both its result and its responses are there (the responses are written
    first, the result last: a run killed between the two is redone)."""
    return (folder / f"{cell_id}.json").is_file() and responses_file(folder, cell_id).is_file()


def finished(item, rebuilds: bool = False) -> bool:
    """On the recorded build; `rebuilds`: or on any rebuild (a cell --sibling need not run again on a third build).
    A session on a fresh machine should finish both cells of a pair: a pair never takes its cells from two builds."""
    return finished_in(item, rebuilds) is not None

