"""The reference builds a study's cells come from (benchmarks/study/study.py): each seed's recorded build, the
rebuilds that did not reproduce it (`--sibling` runs cells on those), and the checks that stop a run before hours of
work on the wrong one.

A rebuild of a seed on a fresh machine is, so far, always another build (rounding), so every cell records the
SHA-256 of its reference and the study's references.json says which build is the recorded one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import study_grid
from study_grid import HERE, REBUILD

from auditor.workflows.doctor import cpu_info

REQUIREMENTS = HERE / "requirements.txt"  # the exact packages those builds came from
PINNED = ("torch", "transformers", "peft")  # what a build records and the study checks before any work


def build_folder(seed: int, sha: str) -> Path:
    """Where a build's cells and localization go: the study's folder for the seed's recorded build, a folder of its
    own (REBUILD + SHA8) for any other build."""
    study = study_grid.ACTIVE.folder
    return study if sha == recorded_builds()[str(seed)]["sha256"] else study / f"{REBUILD}{sha[:8]}"


def reference_build(seed: int, sibling: bool = False) -> tuple[Path, str]:
    """The reference build of this seed and its SHA-256, built (resumably, ~25 min) when it is not there yet, and
    checked against the build the study's cells of that seed came from (Setup.references): cells of two different
    builds never mix. `sibling` accepts another build (recorded as not reproduced) for cells kept apart from the grid."""
    from auditor.io.models import reference_dir, resolve_model
    from auditor.workflows.reference import ReferenceConfig, build_reference

    check_packages(seed)
    ref_dir = reference_dir(seed, study_grid.ACTIVE.recipe)
    built = not (ref_dir / "safety_audit.json").is_file()
    if built:
        print(f"   building reference seed {seed} (resumable)", flush=True)
        build_reference(ReferenceConfig(seed=seed, recipe=study_grid.ACTIVE.recipe))
    sha = resolve_model(str(ref_dir)).content_hash("torch")
    known = recorded_builds()
    versions = json.loads((ref_dir / "safety_audit.json").read_text()).get("versions", {})
    if str(seed) not in known:
        known[str(seed)] = {"sha256": sha, "versions": versions, "cpu": cpu_info(), "cpu_id": cpu_id(),
                            "data_sha256": data_digests(ref_dir), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY")}
        save_builds(known)
    elif known[str(seed)]["sha256"] != sha:
        tried = known[str(seed)].setdefault("not_reproduced", [])
        same = [t for t in tried if t["sha256"] == sha]
        if not same:  # kept beside the build it failed to reproduce
            tried.append({"sha256": sha, **this_machine(versions), "data_sha256": data_digests(ref_dir)})
            save_builds(known)
        elif built:  # an earlier rebuild, made again from scratch here: which machines round alike
            note_rebuilt(known, same[0], versions)
        if sibling:
            return ref_dir, sha
        rec = known[str(seed)]
        fix = ("install those versions and rebuild" if versions != rec["versions"] else
               "the packages are the same, the rounding is not (a fresh machine's rebuild so far always differs): run "
               "the cells on this build with --sibling (a comparison pairs cells of one build)")
        raise SystemExit(f"reference seed {seed} built here ({sha[:12]}, {versions}) is not the build the study's cells "
                         f"came from ({rec['sha256'][:12]}, {rec['versions']}; {study_grid.ACTIVE.references}): "
                         f"{fix}, or move that seed's results aside to start it again")
    elif built:
        note_rebuilt(known, known[str(seed)], versions)
    return ref_dir, sha


def note_rebuilt(known: dict, build: dict, versions: dict) -> None:
    """A build made again from scratch came out identical: the machine is kept with it (`rebuilt_identically`), so
    the record says which CPUs round alike, not only which do not."""
    build.setdefault("rebuilt_identically", []).append(this_machine(versions))
    save_builds(known)


def this_machine(versions: dict) -> dict:
    """What a build made here is kept with: the packages, the CPU (and what tells CPUs of one name apart), the day."""
    return {"versions": versions, "cpu": cpu_info(), "cpu_id": cpu_id(), "date": time.strftime("%Y-%m-%d")}


def rebuild(seed: int) -> str:
    """`--rebuild SEED`: build the seed from scratch here and say which known build it is (the recorded one, an
    earlier rebuild, or a new one): ~25 min, no cells."""
    from auditor.io.models import reference_dir

    there = reference_dir(seed, study_grid.ACTIVE.recipe)
    if (there / "safety_audit.json").is_file():
        raise SystemExit(f"a build of reference seed {seed} is already in {there}: move it aside to rebuild")
    first = str(seed) not in recorded_builds()
    sha = reference_build(seed, sibling=True)[1]
    rec = recorded_builds()[str(seed)]
    same = [t for t in [rec, *rec.get("not_reproduced", [])] if t["sha256"] == sha][0]
    if same is rec:
        return f"reference seed {seed} {'built' if first else 'rebuilt'} here: {sha[:8]}, " + (
            "now its recorded build" if first else "the recorded build")
    ident = " ".join(f"{k} {v}" for k, v in same.get("cpu_id", {}).items() if k != "vendor_id")
    new = not same.get("rebuilt_identically")
    return (f"reference seed {seed} rebuilt here: {sha[:8]}, " + ("another build (not_reproduced in references.json)"
            if new else f"the rebuild of {same['date']} on {same['cpu']['model']} {ident}".rstrip()))


def recorded_builds() -> dict:
    """The active study's references.json: per seed, its recorded build and the rebuilds that did not reproduce it."""
    path = study_grid.ACTIVE.references
    return json.loads(path.read_text()) if path.is_file() else {}


def save_builds(known: dict) -> None:
    """Write references.json back (its folder made first: a study's first build comes before its first cell)."""
    study_grid.ACTIVE.folder.mkdir(parents=True, exist_ok=True)
    study_grid.ACTIVE.references.write_text(json.dumps(known, indent=2) + "\n")


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


def data_digests(ref_dir: Path) -> dict:
    """The SHA-256 of each kind of training row the build made: equal digests put a difference in the training,
    not in the self-distilled answers."""
    return json.loads((ref_dir / "safety_audit.json").read_text()).get("data", {}).get("sha256", {})


def check_packages(seed: int) -> None:
    """Stop before a ~25 min rebuild or hours of cells when the installed packages are not the ones this seed's
    recorded build came from: with others, the rebuild is another model and its cells would not pair."""
    from auditor.training.trainer import training_versions

    want, have = recorded_builds().get(str(seed), {}).get("versions", {}), training_versions()
    differ = [f"{k} {have.get(k)} (recorded {want[k]})" for k in PINNED if k in want and have.get(k) != want[k]]
    if differ:
        raise SystemExit(f"reference seed {seed}'s cells come from other packages than these: {', '.join(differ)}; "
                         f"install {REQUIREMENTS} (pip install -r) and run again")

