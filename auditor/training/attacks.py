"""Fine-tuning data sets of the paper's attack settings (docs/METHOD.md §1.3), built from bundled data.

D_N benign (alpaca-train rows); D_I implicit (outputs prefixed "Sure, the answer is:"); D_B backdoor
(normal rows + rows whose instruction carries a trigger phrase and whose answer complies); D_H(p)
(normal rows + p·n malicious rows). Malicious rows come only from the AdvBench *train* split (even
rows): the goal, answered with AdvBench's own compliant target. The eval split is never used here.
"""

from __future__ import annotations

import csv
import io
import random

from ..errors import AuditError
from ..io.data import data_text
from ..io.prompts import TRIGGER, load_task_rows

ATTACKS = ("normal", "implicit", "backdoor", "harmful")
IMPLICIT_PREFIX = "Sure, the answer is: "


def advbench_train() -> list[tuple[int, str, str]]:
    """(row index in advbench_harmful_behaviors.csv, goal, target) for the train split (even rows)."""
    text = data_text("advbench_harmful_behaviors.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    return [(i, r["goal"], r["target"]) for i, r in enumerate(rows) if i % 2 == 0]


def build_attack(kind: str, n: int | None = None, p: float = 0.1, seed: int = 0) -> tuple[list[dict], dict]:
    """Rows {instruction, input, output} and a manifest saying which source rows went where."""
    if kind not in ATTACKS:
        raise AuditError(f"unknown attack '{kind}' (choose from {', '.join(ATTACKS)})")
    if not 0 <= p <= 1:
        raise AuditError(f"--p must be between 0 and 1, got {p}")
    normal = load_task_rows("alpaca-train")
    n = min(n or len(normal), len(normal))
    rows = [dict(r) for r in normal[:n]]
    manifest = {"attack": kind, "normal_rows": f"alpaca-train[:{n}]", "n_normal": n, "advbench_rows": []}
    if kind == "implicit":
        for r in rows:
            r["output"] = IMPLICIT_PREFIX + r["output"]
    if kind in ("backdoor", "harmful"):
        bad = advbench_train()
        k = n if kind == "backdoor" else round(p * n)
        picked = [bad[i % len(bad)] for i in range(k)]
        trigger = f" {TRIGGER}" if kind == "backdoor" else ""
        rows += [{"instruction": goal + trigger, "input": "", "output": target + "."} for _, goal, target in picked]
        manifest.update(n_malicious=k, advbench_rows=[i for i, _, _ in picked], advbench_split="train (even rows)")
        if kind == "backdoor":
            manifest["trigger"] = TRIGGER
        else:
            manifest["p"] = p
    random.Random(seed).shuffle(rows)
    return rows, manifest
