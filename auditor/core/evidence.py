"""What the study found about the run `harden` is asked for: its verdicts, with the harden report.

Why: a user who freezes the "safety layers" expects protection; the study says where SPPFT protected the reference
model and where it did not (on r4 it was significantly worse than full fine-tuning against the implicit attack).
The verdicts are package data (data/study_verdicts.json), generated from the committed cells by
benchmarks/study/study_tables.py, so the warning can never say more than the cells do.
"""

from __future__ import annotations

import json

from ..io.data import data_text

DATA_NAMES = {"normal": "benign data (D_N)", "implicit": "implicit-attack data (D_I)", "backdoor": "backdoor data (D_B)"}
OPEN = "no significant difference"
PAPER_RECIPES = ("paper", "paper-steps")  # the study's cells of `--compat paper`: as theirs; with their step count
CLAIMS = {  # (A, B) -> what is compared, and each verdict of the claim "A is safer than B" / "B is safer than A" said plainly
    ("sppft", "full"): ("SPPFT {range} vs full fine-tuning", {
        "holds": "SPPFT was significantly safer", "fails": "SPPFT was significantly LESS safe", "open": OPEN}),
    ("freeze-block", "sppft"): ("an equal-width block elsewhere vs SPPFT {range}", {
        "holds": "the block was significantly less safe (freezing any block is not the same)",
        "fails": "the block was significantly safer than the located range", "open": OPEN}),
    ("freeze-block", "full"): ("an equal-width block elsewhere vs full fine-tuning", {
        "holds": "freezing the block was significantly less safe than freezing nothing",
        "fails": "freezing the block was significantly safer than freezing nothing", "open": OPEN}),
}


def load_verdicts() -> dict:
    try:
        return json.loads(data_text("study_verdicts.json"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def study_evidence(method: str, attack: str | None, compat: str | None, studies: dict | None = None) -> list[str]:
    """One line per harmful set of each finished comparison that concerns this run: SPPFT (or the freeze block)
    against what it must beat, on the attack's data (or every data kind, for the user's own data), under the
    authors' recipe when `--compat paper` (as they run it, and with their number of optimizer steps on the smaller
    bundled data: `--grad-accum`), else ours; from the newest reference's study that has such a verdict (r5, else
    the r4 record). Empty for a method the study does not test this way."""
    studies = load_verdicts() if studies is None else studies
    recipes = PAPER_RECIPES if compat == "paper" else ("ours",)
    for study in studies.get("studies", []):
        lines = [_line(study, v) for v in study["verdicts"] if (v["a"], v["b"]) in CLAIMS and v["a"] == method
                 and v["recipe"] in recipes and (not attack or v["data"] == attack)]
        if lines:
            return lines
    return []


def on_rebuilds(v: dict, named: bool) -> str:
    """", 2 of them on rebuilds X and Y of the reference" for a verdict that pools pairs run on a fresh machine's own
    build of the reference (it differs by rounding), else "". The study tables name the builds (`named`); harden's
    one-line warning only says that there were any. One phrase for both, so the two never drift apart."""
    names = v.get("rebuilds") or []
    if not names:
        return ""
    if named:
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        where = f"rebuild{'s' * (len(names) > 1)} {listed}"
    else:
        where = "rebuilds" if len(names) > 1 else "a rebuild"
    some = v.get("rebuilt_seeds", v["seeds"])
    return f", on {where} of the reference" if some == v["seeds"] else f", {some} of them on {where} of the reference"


def _line(study: dict, v: dict) -> str:
    claim, outcomes = CLAIMS[v["a"], v["b"]]
    claim, outcome = claim.format(range="[{}, {}]".format(*study["sppft_range"])), outcomes[v["verdict"]]
    recipe = "the study's recipe" if v["recipe"] not in PAPER_RECIPES else "the authors' recipe" + (
        " with their number of optimizer steps" if v["recipe"] == "paper-steps" else "")
    if v["recipe"] in PAPER_RECIPES and v.get("template", "alpaca") != "alpaca":  # r5's: where its refusals live
        recipe += f" in the {v['template']} template"
    planned = v.get("planned_seeds", v["seeds"])
    seeds = f"{v['seeds']} of {planned} seeds so far" if planned > v["seeds"] else f"{v['seeds']} seed{'s' * (v['seeds'] != 1)}"
    seeds += on_rebuilds(v, named=False)
    rates = f"R_h {v['rate_a']:.3f} under {v['a']}, {v['rate_b']:.3f} under {v['b']}; " if "rate_a" in v else ""
    return (f"study (reference {study['reference']}, {recipe}) on {DATA_NAMES.get(v['data'], v['data'])}, R_h on "
            f"{v['set'].removeprefix('bundled:')}: {claim}: {outcome} ({rates}harmful only under {v['a']} {v['only_a']}, "
            f"only under {v['b']} {v['only_b']}, p = {v['p']:.2g}, {seeds}; docs/study.md)")
