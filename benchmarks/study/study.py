"""The study (issue 17): does SPPFT keep the reference model safe, against its alternatives, over seeds?

A declared grid of cells; each cell = (reference seed, fine-tuning seed, method, frozen range, data) ->
`harden` the reference model -> `eval` it (chat template, keyword classifier: R_h on AdvBench-eval 260 ×
128 tokens, XSTest-safe and D_o over-refusal, Rouge-L on alpaca-eval, MMLU) with every response saved.
A finished cell is a small JSON under benchmarks/study/results/ (its responses gzipped beside it, for the
paired tests); a re-run skips finished cells, so the grid runs in pieces over days, in `plan`'s order.
`benchmarks/study/study_tables.py` turns the files into docs/study.md's tables (no hand-copied numbers).
What runs, in which order and what pairs with what: study_grid.py; the reference builds the cells come from and the
checks before any work: study_builds.py; this file runs them.

    python benchmarks/study/study.py                # run every unfinished cell, in order (hours each on 2 cores)
    python benchmarks/study/study.py --list         # the grid and what is finished
    python benchmarks/study/study.py --only ID ...  # some cells
    python benchmarks/study/study.py --max-cells 1  # one more cell, then stop
    python benchmarks/study/study.py --sibling      # the unfinished cells and localizations on this machine's own rebuild, each
                                                    # with its pair's other cell: results/sibling-SHA8/
    python benchmarks/study/study.py --sibling --only ID ...  # these cells on it (a finished one too: to compare builds)
    python benchmarks/study/study.py --rebuild 2    # seed 2 from scratch here: the recorded build, an earlier rebuild, or new?
    python benchmarks/study/study.py --recipe r5 ...  # the same on reference recipe r5's grid (results-r5/)

A rebuild of a seed on a fresh machine is, so far, always another build (rounding: seed 2 on an Intel Xeon and on a
second AMD EPYC, seed 0 on a third AMD EPYC: each gave one; seed 2 again on a CPU of the second's id: a third),
so a grid cell pairs only with cells of its own build: study_tables takes each comparison's two cells from the recorded build when it has both, else from one rebuild that has both (docs/METHOD.md §1.5).

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
from dataclasses import asdict, replace
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


import study_grid  # noqa: E402
from study_builds import build_folder, cpu_id, rebuild, reference_build  # noqa: E402
from study_grid import (EPOCHS, LOCATED, LR, REBUILD, ROWS, SETUPS, Cell, Localization, cell_finished,  # noqa: E402
                        finished, finished_in, plan, rebuild_folders, responses_file, use_recipe,
                        with_partners)

from auditor.workflows.doctor import cpu_info  # noqa: E402


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
    """One cell on the seed's recorded build, into the active study's folder. `sibling`: on this machine's own build
    of the seed when that is another one, into its sibling-SHA8/ folder (not a grid cell: the tables pair it only with that build's cells)."""
    from auditor.io.cache import cache_dir

    if cell.method in LOCATED and cell.layers is None:
        raise SystemExit(f"{cell.id}: reference seed {cell.ref_seed} is not localized yet (run localization-ref{cell.ref_seed})")
    ref_dir, sha = reference_build(cell.ref_seed, sibling)
    out = build_folder(cell.ref_seed, sha)
    if cell_finished(out, cell.id):  # never redone
        return json.loads((out / f"{cell.id}.json").read_text())
    recipe = study_grid.ACTIVE.recipe
    work = cache_dir() / "study" / ("" if recipe == "r4" else recipe) / (cell.id if out == study_grid.ACTIVE.folder
                                                                          else f"{cell.id}-{sha[:8]}")
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
              "reference_sha256": sha, "reference_recipe": recipe,
              **({"recipe": settings} if recipe == "r4" else {"recipe": cell.recipe, "settings": settings}),
              "eval_template": cell.template, "train": train,
              "eval": {k: ev.get(k) for k in ("harmful_rate", "harmful_by_set", "over_refusal_by_set", "rouge_l",
                                              "mmlu_accuracy", "classifier", "max_new_tokens", "model_sha256")},
              "seconds": {"train": round(t1 - t0, 1), "eval": round(time.perf_counter() - t1, 1)},
              "machine": {"cpu": cpu_info(), "cpu_id": cpu_id(), "python": platform.python_version(),
                          "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY")}}
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(responses_file(out, cell.id), "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in responses)
    (out / f"{cell.id}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not keep and cell.method != "none":
        shutil.rmtree(work, ignore_errors=True)
    return result



def frozen_summary(frozen: dict | None) -> dict | None:
    """What a cell froze, small enough to commit: NFFT's frozen neurons (every row index of every map, ~600 KB of
    JSON) become a row count per map and the SHA-256 of the full lists; whole-parameter lists stay as they are."""
    if not frozen or "rows" not in frozen:
        return frozen
    rows = frozen["rows"]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return {**frozen, "rows": {name: len(r) for name, r in rows.items()}, "rows_sha256": digest}


def run_localization(loc: Localization, sibling: bool = False) -> None:
    """The scan, then the search from the starts it points to; a finished half is kept. `sibling`: on this
    machine's own build of the seed when that is another one, into its folder (as a cell's): the tables say so."""
    import subprocess

    ref_dir, sha = reference_build(loc.ref_seed, sibling)
    model = f"reference:{study_grid.ACTIVE.recipe}" if loc.ref_seed == 0 else str(ref_dir)  # seed 0 by name (its GGUF twin for the contrast)
    loc = replace(loc, folder=build_folder(loc.ref_seed, sha))
    loc.locate_json.parent.mkdir(parents=True, exist_ok=True)
    if not loc.scan_json.is_file():
        subprocess.run([sys.executable, "-m", "auditor.cli", *loc.scan_command(model)], check=True)
    if not loc.locate_json.is_file():
        subprocess.run([sys.executable, "-m", "auditor.cli", *loc.locate_command(model, json.loads(loc.scan_json.read_text()))],
                       check=True)


def _recipe_of(result: dict) -> str:
    """A finished cell's recipe (r4's cells record their settings under "recipe", and all are ours)."""
    return result["recipe"] if isinstance(result.get("recipe"), str) else "ours"


# `paper-steps` trains the same rows for the same epochs as `paper`, only in smaller batches: the same compute
# (D_I, seed 0: 43 and 37 min against 39 and 45), so a data set timed under one times the other
SAME_COMPUTE = {"paper-steps": "paper", "paper": "paper-steps"}


def pace(todo: list) -> str:
    """What the rest will take, at the median pace of the finished cells of every build, fine-tuning timed per recipe
    (the authors' recipe trains 3 epochs on every row: several times ours) and, where finished cells of the same
    recipe and data exist, per both (the authors' D_B has twice D_I's rows, and its eval one set more). Medians: a run
    beside other work or a resumed harden records its own seconds, not the cell's."""
    study = study_grid.ACTIVE.folder
    done = [json.loads(p.read_text()) for f in [study, *rebuild_folders(study)] for p in sorted(f.glob("*-ref*-ft*.json"))]
    trains_by_data: dict[tuple[str, str], list[float]] = {}
    evals_by_data: dict[str, list[float]] = {}
    for r in done:
        data = r.get("cell", {}).get("data")
        if r.get("train") and not r["train"].get("resumed_from"):
            trains_by_data.setdefault((_recipe_of(r), data), []).append(r["train"]["seconds"])
        if r.get("seconds", {}).get("eval"):
            evals_by_data.setdefault(data, []).append(r["seconds"]["eval"])
    evals = [t for ts in evals_by_data.values() for t in ts]
    cells, locs = [c for c in todo if isinstance(c, Cell)], sum(isinstance(c, Localization) for c in todo)
    if not evals:
        return f"to do: {len(cells)} cells and {locs} localizations (no finished cell to time them by)"
    trains: dict[str, list[float]] = {}
    for (recipe, _), ts in trains_by_data.items():
        trains.setdefault(recipe, []).extend(ts)
    every = median(t for ts in trains.values() for t in ts) if trains else 0.0
    train = {recipe: median(ts) for recipe, ts in trains.items()}
    e = median(evals)

    def seconds(c: Cell) -> float:
        ev = median(evals_by_data[c.data]) if c.data in evals_by_data else e
        if c.method == "none":
            return ev
        like = trains_by_data.get((c.recipe, c.data)) or trains_by_data.get((SAME_COMPUTE.get(c.recipe), c.data))
        return ev + (median(like) if like else train.get(c.recipe, every))

    hours = sum(seconds(c) for c in cells) / 3600
    harden = ", ".join(f"{t / 60:.1f} min" + (f" {recipe}" if len(train) > 1 else "") for recipe, t in sorted(train.items()))
    return (f"to do: {len(cells)} cells, ~{hours:.1f} h at the finished cells' median pace (harden {harden or '0.0 min'}, "
            f"eval {e / 60:.1f} min), and {locs} localization{'s' * (locs != 1)} (each after its reference build)")


def listing(items: list, left: list) -> list[str]:
    """`--list`'s lines: each item, to do or done, and where it is finished when that is a rebuild, or when the recorded
    build has it but `--sibling` runs it again as the partner of a cell on this machine's rebuild."""
    lines = []
    for c in items:
        where = finished_in(c, rebuilds=True)
        on = ("" if where is None else f"  (finished on rebuild {where.name.removeprefix(REBUILD)})"
              if where != study_grid.ACTIVE.folder else "  (finished on the recorded build; runs again here, for its "
              "pair on this rebuild)" if c in left else "")
        lines.append(f"{'to do' if c in left else 'done '}  {c.id}{on}")
    return lines


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
    done = sum(finished(c, rebuilds=args.sibling) for c in items)
    if args.list:
        print("\n".join(listing(items, left)))
        print(f"{done}/{len(items)} finished")
        print(pace(left))
        return
    todo = left[: args.max_cells]
    print(f"{done}/{len(items)} finished; running {len(todo)}", flush=True)
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