"""Progress of long jobs as rich bars on stderr (stdout stays clean for --json -)."""

from __future__ import annotations

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
        self.progress.console.print(f"[dim]{message}[/dim]")


@contextmanager
def rich_reporter(console: Console, quiet: bool):
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console, disable=quiet, transient=False) as p:
        yield RichReporter(p)
