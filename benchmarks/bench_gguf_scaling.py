"""Per-count cost of scaling a GGUF's layers for locate: a scaled copy of the file per count (before) against
scaling the loaded model in memory (llama_inplace.py), on the bundled model, in one process, interleaved.

    python benchmarks/bench_gguf_scaling.py [--counts 5] [--prompts 24] [--threads 2] [--model FILE.gguf]

Per count: the seconds to enter and leave `scaled()` (copy: write the copy, reload it, reload the source;
in place: patch and restore the tensors), the bytes written to disk, and the decode of the count's prompts
(`opening` classifier). Writes results/bench_gguf_scaling.json with the CPU, flags and load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_avg, write  # noqa: E402

from auditor.backends import open_backend  # noqa: E402
from auditor.core.refusal import make_classifier  # noqa: E402
from auditor.io.models import resolve_model  # noqa: E402
from auditor.io.prompts import load_prompts  # noqa: E402
from auditor.workflows.doctor import cpu_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="another GGUF (e.g. a random-weight 1B shape from _shapes.py)")
    a = ap.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} · flags {cpu['flags']} · load {load_avg()}", flush=True)
    ref = resolve_model(a.model)
    prompts = list(load_prompts("over-rejection").prompts[: a.prompts])
    clf = make_classifier("opening")
    from auditor.io.models import layer_count

    n = layer_count(ref)
    layers = range(8, 15) if a.model is None else range(n // 3, 2 * n // 3)  # the bundled: its usual range
    alpha = 1.2
    backends = {}
    for mode in ("copy", "in_place"):
        os.environ["SAFETY_AUDIT_GGUF_COPIES"] = "1" if mode == "copy" else "0"
        backends[mode] = open_backend(ref, "llama", threads=a.threads)
        with backends[mode].scaled(layers, alpha):  # the in-place path reloads once, writable: not a count's cost
            pass
    scale_s = {m: [] for m in backends}
    decode_s = {m: [] for m in backends}
    verdicts = {m: [] for m in backends}
    for _ in range(a.counts):
        for mode, b in backends.items():
            t0 = time.perf_counter()
            with b.scaled(layers, alpha):
                t1 = time.perf_counter()
                verdicts[mode].append(sum(clf.decide(b, prompts, "alpaca")))
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            scale_s[mode].append(round((t1 - t0) + (t3 - t2), 4))
            decode_s[mode].append(round(t2 - t1, 4))
    size = ref.path.stat().st_size
    result = {"command": "python benchmarks/bench_gguf_scaling.py " + " ".join(sys.argv[1:]), "model": ref.label,
              "file_bytes": size, "layers": [layers[0], layers[-1]], "alpha": alpha, "prompts": len(prompts),
              "in_place": backends["in_place"].scales_in_place,
              "bytes_written_per_count": {"copy": size, "in_place": 0},
              "scale_and_restore_seconds": scale_s, "decode_seconds": decode_s, "refusals": verdicts,
              "median": {m: {"scale_and_restore": statistics.median(scale_s[m]), "decode": statistics.median(decode_s[m])}
                         for m in backends}, "cpu": cpu, "load": load_avg()}
    for b in backends.values():
        b.close()
    for m, v in result["median"].items():
        print(f"{m}: scale+restore {v['scale_and_restore'] * 1000:.0f} ms, decode {v['decode'] * 1000:.0f} ms per count")
    print(f"wrote {write('bench_gguf_scaling' + ('' if a.model is None else '-' + ref.path.stem), result)}")


if __name__ == "__main__":
    main()
