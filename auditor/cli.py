"""safety-audit command line: parses options, calls the library, renders. Bad input -> one line, exit 2."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .errors import AuditError

err = Console(stderr=True)


class RichReporter:
    """Shows the library's progress as rich bars on stderr (stdout stays clean for --json -)."""

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def start(self, description: str, total: int) -> None:
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def status(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]")


@contextmanager
def reporter(quiet: bool):
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=err, disable=quiet, transient=False) as p:
        yield RichReporter(p)


def _fail(e: Exception) -> None:
    err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    sys.exit(2)


class AuditGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AuditError as e:
            _fail(e)


@click.group(cls=AuditGroup)
@click.version_option(__version__, prog_name="safety-audit")
def main():
    """Find, verify and protect the safety layers of local open-weight LLMs."""


@main.command()
@click.argument("model", required=False)
@click.option("--backend", type=click.Choice(["auto", "llama", "torch"]), default="auto", show_default=True,
              help="GGUF → llama.cpp by default; HF folder → torch; torch on a GGUF loads it dequantized.")
@click.option("--template", default="alpaca", show_default=True, help="alpaca (paper) | chat (model's own) | raw")
@click.option("--normal", default="normal", show_default=True, help="Normal prompts: a bundled set or .txt/.csv/.json/.jsonl.")
@click.option("--malicious", default="malicious", show_default=True, help="Malicious prompts: a bundled set or a file.")
@click.option("--pairs", type=int, default=None, help="Sample N random pairs per type like the paper (default: all pairs, exact).")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap replicates (over prompts) for the 95% CIs; 0 = none.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--contrast", "contrast", default=None, metavar="MODEL2", help="Scan a second model (e.g. the base model) and report the differential gap.")
@click.option("--contrast-backend", type=click.Choice(["auto", "llama", "torch"]), default="auto", show_default=True)
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the JSON report (schema_version 1); '-' prints it to stdout.")
@click.option("--plot", "plot_path", default=None, metavar="PATH.png", help="Write a two-panel PNG (cosines; angle gap with CI).")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--no-cache", is_flag=True, help="Do not reuse or store cached hidden states.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def scan(model, backend, template, normal, malicious, pairs, bootstrap, seed, threads, contrast, contrast_backend,
         json_path, plot_path, force, no_cache, quiet):
    """Per-layer angle gap between normal and malicious prompts, and the initial safety-layer range.

    MODEL is a .gguf file or a Hugging Face model folder; omitted, the bundled SmolLM2-135M-Instruct.
    """
    from .io import check_writable, write_json
    from .report import plot_scan, print_scan
    from .scan import ScanConfig, run_scan

    for p in (json_path, plot_path):  # fail before the long part, not after
        if p and p != "-":
            check_writable(p, force)
    cfg = ScanConfig(model=model, backend=backend, template=template, normal=normal, malicious=malicious, pairs=pairs,
                     bootstrap=bootstrap, seed=seed, threads=threads, contrast=contrast,
                     contrast_backend=contrast_backend, use_cache=not no_cache)
    with reporter(quiet) as rep:
        report = run_scan(cfg, rep)
    if json_path == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        print_scan(report, Console())
    if json_path and json_path != "-":
        write_json(json_path, report, force)
        err.print(f"wrote {json_path}")
    if plot_path:
        plot_scan(report, plot_path, force)
        err.print(f"wrote {plot_path}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema_version 1).")
def doctor(as_json):
    """Versions, compiled ops (CPU/CUDA), threads, and where the bundled model is."""
    from .doctor import collect, render

    info = collect()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        render(info, Console())


if __name__ == "__main__":
    main()
