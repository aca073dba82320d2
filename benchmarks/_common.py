"""Shared benchmark helpers: explicit threads, median timing, peak-RSS in a child process, JSON output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def set_threads(n: int | None = None) -> int:
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def timed(fn, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0) and return the current RSS in MB.
    (getrusage's ru_maxrss survives execve, so a child would inherit its parent's peak.)"""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def child_peak_mb(script: str, *args: str) -> float:
    """Run `script --_mem args...` in a fresh process; it prints its extra peak RSS in MB on the last line."""
    out = subprocess.run([sys.executable, script, "--_mem", *args], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(data, indent=2) + "\n")
    return p
