"""Progress of long jobs as rich bars on stderr (stdout stays clean for --json -)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichReporter:
    """The workflows' Reporter, shown as rich progress bars."""

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def start(self, description: str, total: int) -> None:
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def status(self, message: str) -> None:
        self.progress.console.print(message, style="dim", markup=False)


class LogReporter:
    """Progress as plain lines for logs and pipes, where rich hides its bars: done/total, rate and ETA every
    `every` seconds (SAFETY_AUDIT_PROGRESS_SECONDS, default 10) and when a task completes."""

    def __init__(self, console: Console, every: float | None = None):
        self.console = console
        self.every = float(os.environ.get("SAFETY_AUDIT_PROGRESS_SECONDS", 10)) if every is None else every
        self.description, self.total, self.done, self.t0, self.last = "", 0, 0, 0.0, 0.0

    def start(self, description: str, total: int) -> None:
        self.description, self.total, self.done = description, total, 0
        self.t0 = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.console.print(f"{self.description}: {self.done}/{self.total} ({rate:.2f}/s, "
                               f"{'done' if self.done >= self.total else f'ETA {_clock(eta)}'})", highlight=False, markup=False)

    def status(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


@contextmanager
def rich_reporter(console: Console, quiet: bool):
    """Rich bars on a terminal, plain periodic lines elsewhere, nothing with --quiet."""
    if not quiet and not console.is_terminal:
        yield LogReporter(console)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console, disable=quiet, transient=False) as p:
        yield RichReporter(p)
