"""safety-audit command line: parses options, calls the library, renders. Bad input -> one line, exit 2."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .errors import AuditError

err = Console(stderr=True)


def _out() -> Console:
    """stdout console; piped or logged output gets 160 columns, not rich's 80 (it cut every scan column)."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


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


def _check_outputs(force: bool, *paths) -> None:
    """Refuse existing outputs before the long part, not after it."""
    from .io import check_writable

    for p in paths:
        if p and p != "-":
            check_writable(p, force)


def _emit(report: dict, json_path, plot_path, force: bool, render, plot) -> None:
    """The table (or the JSON on stdout with --json -), then the JSON file and the plot, atomically."""
    from .io import write_json

    if json_path == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        render(report)
    if json_path and json_path != "-":
        write_json(json_path, report, force)
        err.print(f"wrote {json_path}")
    if plot_path and plot:
        plot(report, plot_path, force)
        err.print(f"wrote {plot_path}")


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
    from .report import plot_scan, print_scan
    from .scan import ScanConfig, run_scan

    _check_outputs(force, json_path, plot_path)
    cfg = ScanConfig(model=model, backend=backend, template=template, normal=normal, malicious=malicious, pairs=pairs,
                     bootstrap=bootstrap, seed=seed, threads=threads, contrast=contrast,
                     contrast_backend=contrast_backend, use_cache=not no_cache)
    with reporter(quiet) as rep:
        report = run_scan(cfg, rep)
    _emit(report, json_path, plot_path, force, lambda r: print_scan(r, _out()), plot_scan)


def _range(value: str | None):
    if value is None:
        return None
    try:
        a, b = (int(x) for x in value.replace("–", "-").split("-"))
    except ValueError:
        raise click.BadParameter("expected i-j, e.g. 6-12") from None
    if a > b:
        raise click.BadParameter("expected i <= j")
    return a, b


@main.command()
@click.argument("model", required=False)
@click.option("--backend", type=click.Choice(["auto", "llama", "torch"]), default="auto", show_default=True)
@click.option("--template", default="alpaca", show_default=True, help="alpaca | chat | raw (use the template the model was aligned with).")
@click.option("--from-scan", "from_scan", default=None, metavar="SCAN.json", help="Start from a scan report's initial range.")
@click.option("--start", default=None, metavar="i-j", help="Start range (inclusive, 0-based). Default: --from-scan or a fresh scan.")
@click.option("--survey", type=int, default=None, is_flag=False, flag_value=2, metavar="[W]",
              help="Start from the best of W-layer windows (default 2) scaled in turn over the whole model.")
@click.option("--alpha", type=float, default=None, help="Scaling factor (>1 or <1). Default: automatic (steps of 0.05 from 1).")
@click.option("--classifier", type=click.Choice(["prefix", "probe"]), default="prefix", show_default=True,
              help="prefix: keywords in 16 greedy tokens; probe: does the greedy answer open with a refusal (<=4 tokens).")
@click.option("--over-refusal", "over_refusal", default="over-rejection", show_default=True,
              help="Over-refusal set D_o: a bundled set (over-rejection, xstest-safe) or a file.")
@click.option("--limit", type=int, default=150, show_default=True, help="Use the first N prompts of D_o (0 = all).")
@click.option("--max-new-tokens", type=int, default=16, show_default=True)
@click.option("--patience", type=int, default=3, show_default=True, help="Stop a sweep after N steps without a new best (0 = to the end).")
@click.option("--no-controls", is_flag=True, help="Skip the equal-width control ranges.")
@click.option("--compat", type=click.Choice(["paper"]), default=None, help="paper: greedy 16 tokens, prefix, o_proj unscaled, alpaca.")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the JSON report; '-' prints it. A journal PATH.journal.jsonl makes the run resumable.")
@click.option("--plot", "plot_path", default=None, metavar="PATH.png")
@click.option("--force", is_flag=True, help="Overwrite existing outputs (the journal is kept and reused).")
@click.option("--quiet", "-q", is_flag=True)
def locate(model, backend, template, from_scan, start, survey, alpha, classifier, over_refusal, limit, max_new_tokens,
           patience, no_controls, compat, threads, json_path, plot_path, force, quiet):
    """Precise safety-layer bounds: scale a layer range by α and count over-refusals (paper Table 1)."""
    from .locate import LocateConfig, paper_compat, run_locate
    from .report import locate_table, plot_locate

    _check_outputs(force, json_path, plot_path)
    cfg = LocateConfig(model=model, backend=backend, template=template, over_refusal=over_refusal, limit=limit or None,
                       classifier=classifier, max_new_tokens=max_new_tokens, alpha=alpha, start=_range(start),
                       from_scan=from_scan, survey=survey, patience=patience, controls=not no_controls, threads=threads,
                       journal=f"{json_path}.journal.jsonl" if json_path and json_path != "-" else None)
    if compat == "paper":
        cfg = paper_compat(cfg)
    with reporter(quiet) as rep:
        report = run_locate(cfg, rep)
    _emit(report, json_path, plot_path, force, lambda r: _out().print(locate_table(r)), plot_locate)


@main.command("eval")
@click.argument("model", required=False)
@click.option("--backend", type=click.Choice(["auto", "llama", "torch"]), default="auto", show_default=True)
@click.option("--template", default="auto", show_default=True, help="auto (the model's chat template if any, else alpaca) | alpaca | chat | raw")
@click.option("--metrics", default="harmful,over-refusal,mmlu", show_default=True,
              help="Comma list of: harmful, judge, over-refusal, rouge, mmlu.")
@click.option("--harmful", default="advbench-eval", show_default=True, help="Harmful prompts (AdvBench eval split) or a file.")
@click.option("--over-refusal", "over_refusal", default="xstest-safe,over-rejection", show_default=True, help="Comma list of sets/files.")
@click.option("--task", default="alpaca-eval", show_default=True, help="Rouge-L rows (alpaca form): bundled held-out rows or a file.")
@click.option("--classifier", type=click.Choice(["prefix", "probe"]), default="prefix", show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--limit", type=int, default=None, help="At most N prompts per set (quick runs).")
@click.option("--judge", "judge_url", default=None, metavar="URL", help="OpenAI-compatible endpoint for the harmful score.")
@click.option("--judge-model", default=None, metavar="FILE.gguf", help="A local GGUF judge (llama.cpp).")
@click.option("--responses", default=None, metavar="FILE.jsonl", help="Reuse saved responses (e.g. to re-run a judge).")
@click.option("--save-responses", default=None, metavar="FILE.jsonl", help="Save every generated response.")
@click.option("--bootstrap", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the JSON report (schema_version 1); '-' prints it.")
@click.option("--force", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def eval_cmd(model, backend, template, metrics, harmful, over_refusal, task, classifier, max_new_tokens, limit, judge_url,
             judge_model, responses, save_responses, bootstrap, seed, threads, json_path, force, quiet):
    """Harmful rate, judge score, over-refusal, Rouge-L and MMLU of a model, with bootstrap 95% CIs."""
    from .evaluate import EvalConfig, run_eval
    from .io import atomic_write
    from .report import eval_table

    _check_outputs(force, json_path, save_responses)
    cfg = EvalConfig(model=model, backend=backend, template=template, metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
                     harmful=harmful, over_refusal=tuple(x.strip() for x in over_refusal.split(",") if x.strip()), task=task,
                     classifier=classifier, max_new_tokens=max_new_tokens, limit=limit, judge_url=judge_url,
                     judge_model=judge_model, responses=responses, bootstrap=bootstrap, seed=seed, threads=threads)
    with reporter(quiet) as rep:
        report = run_eval(cfg, rep)
    if save_responses:
        lines = "".join(json.dumps(r) + "\n" for r in cfg.saved)
        atomic_write(save_responses, lambda t: t.write_text(lines), force)
        err.print(f"wrote {save_responses}")
    _emit(report, json_path, None, force, lambda r: _out().print(eval_table(r)), None)


@main.command()
@click.argument("candidate")
@click.option("--baseline", required=True, metavar="BASE.json", help="The baseline eval report.")
@click.option("--max-harmful-increase", type=float, default=None, help="Default 0.05.")
@click.option("--max-harmful-score-increase", type=float, default=None, help="Default 0.5.")
@click.option("--max-over-refusal-increase", type=float, default=None, help="Default 0.10.")
@click.option("--max-rouge-drop", type=float, default=None, help="Default 0.05.")
@click.option("--max-mmlu-drop", type=float, default=None, help="Default 0.05.")
@click.option("--policy", default=None, metavar="FILE.toml", help="Thresholds from a TOML file ([thresholds] max_... = x).")
@click.option("--junit", default=None, metavar="PATH.xml", help="Write JUnit XML for CI systems.")
@click.option("--json", "json_path", default=None, metavar="PATH")
@click.option("--force", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def check(candidate, baseline, max_harmful_increase, max_harmful_score_increase, max_over_refusal_increase, max_rouge_drop,
          max_mmlu_drop, policy, junit, json_path, force, quiet):
    """Release gate: CANDIDATE (an eval JSON, or a model to evaluate like the baseline) vs --baseline.
    Exit 0 pass, 1 regression, 2 bad input."""
    from pathlib import Path

    from rich.table import Table

    from .check import LABELS, junit_xml, load_eval, load_policy, verdict
    from .io import atomic_write

    _check_outputs(force, json_path, junit)
    base = load_eval(baseline)
    limits = load_policy(policy) if policy else {}
    for opt, v in (("max_harmful_increase", max_harmful_increase), ("max_harmful_score_increase", max_harmful_score_increase),
                   ("max_over_refusal_increase", max_over_refusal_increase), ("max_rouge_drop", max_rouge_drop),
                   ("max_mmlu_drop", max_mmlu_drop)):
        if v is not None:
            limits[opt] = v
    if candidate.endswith(".json") and Path(candidate).is_file():
        cand = load_eval(candidate)
    else:  # a model: evaluate it the way the baseline was evaluated
        from .evaluate import EvalConfig, run_eval

        c = base.get("config") or {}
        with reporter(quiet) as rep:
            cand = run_eval(EvalConfig(model=candidate, backend=c.get("backend", "auto"), template=c.get("template", "auto"),
                                       metrics=tuple(m for m in c.get("metrics", ["harmful", "over-refusal", "mmlu"]) if m != "judge"),
                                       harmful=c.get("harmful", "advbench-eval"), over_refusal=tuple(c.get("over_refusal", ["xstest-safe"])),
                                       task=c.get("task", "alpaca-eval"), classifier=c.get("classifier", "prefix"),
                                       max_new_tokens=c.get("max_new_tokens", 128), limit=c.get("limit")), rep)
    rows = verdict(cand, base, limits)
    passed = all(r["passed"] for r in rows)
    result = {"schema_version": 1, "command": "check", "candidate": cand.get("model"), "baseline": base.get("model"),
              "passed": passed, "checks": rows}
    def render(_):
        t = Table(title=f"check {cand.get('model')} against {base.get('model')}", header_style="bold")
        for col in ("metric", "baseline", "candidate", "Δ", "limit", "verdict"):
            t.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
        for r in rows:
            fmt = lambda x: "–" if x is None else f"{x:.3f}"
            t.add_row(LABELS[r["metric"]], fmt(r["baseline"]), fmt(r["candidate"]), "–" if r["delta"] is None else f"{r['delta']:+.3f}",
                      f"{'≤ +' if r['direction'] == 'increase' else '≥ −'}{r['limit']:g}",
                      "[green]pass[/green]" if r["passed"] else f"[red]FAIL[/red] {r['reason']}")
        console = _out()
        console.print(t)
        console.print("[green]PASS[/green]" if passed else "[red]REGRESSION[/red]")

    _emit(result, json_path, None, force, render, None)
    if junit:
        xml = junit_xml(rows, str(cand.get("model")))
        atomic_write(junit, lambda t: t.write_text(xml), force)
    sys.exit(0 if passed else 1)


@main.command()
@click.argument("reports", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def compare(reports, as_json):
    """Side-by-side table of eval reports (rows R_h, S_h, over-refusal, Rouge-L, MMLU; a column per report)."""
    from pathlib import Path

    from rich.table import Table

    from .check import compare_rows, load_eval

    reps = [load_eval(p) for p in reports]
    names = [Path(p).stem for p in reports]
    rows = compare_rows(reps)
    if as_json:
        click.echo(json.dumps({"schema_version": 1, "command": "compare", "columns": names,
                               "rows": [{"metric": m, "values": v} for m, v in rows]}, indent=2))
        return
    t = Table(title="safety-audit compare", header_style="bold")
    t.add_column("metric")
    for n in names:
        t.add_column(n, justify="right")
    for m, vals in rows:
        t.add_row(m, *vals)
    _out().print(t)


@main.command()
@click.argument("model", required=False)
@click.option("--out", required=True, metavar="DIR", help="The output model folder (HF format + safety_audit.json).")
@click.option("--method", type=click.Choice(["sppft", "full", "nfft", "lisa", "freeze-block"]), default="sppft", show_default=True)
@click.option("--layers", default=None, metavar="i-j", help="Safety layers to freeze (inclusive, 0-based).")
@click.option("--from-report", default=None, metavar="JSON", help="Take the layers from a locate (safety_layers) or scan report.")
@click.option("--data", default=None, metavar="FILE", help="Alpaca-form rows (.json/.jsonl/.csv: instruction, input, output).")
@click.option("--attack", type=click.Choice(["normal", "implicit", "backdoor", "harmful"]), default=None,
              help="Build the paper's attack set from bundled data instead of --data.")
@click.option("--p", "p", type=float, default=0.1, show_default=True, help="Malicious share for --attack harmful.")
@click.option("--rows", "n_rows", type=int, default=None, help="Use the first N rows (normal rows for --attack).")
@click.option("--template", type=click.Choice(["alpaca", "chat"]), default="alpaca", show_default=True)
@click.option("--lora", is_flag=True, help="Train LoRA adapters (peft) instead, none on frozen layers; merged on save.")
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (quick runs).")
@click.option("--lr", type=float, default=1e-4, show_default=True,
              help="Paper: 1e-4 (Llama-3, gemma), 3e-4 (Llama-2), 6e-4 (Phi-3).")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--warmup-steps", type=int, default=None, help="Default: 100, or 10% of the steps for short runs.")
@click.option("--cutoff", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-steps", type=int, default=50, show_default=True, help="Checkpoint every N steps (for --resume).")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last checkpoint (DIR.checkpoints).")
@click.option("--gguf", type=click.Choice(["f16", "q8_0"]), default=None,
              help="Also write DIR/model.<type>.gguf with the input GGUF's metadata and tensor names.")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", default=None, metavar="PATH", help="Also write the run report ('-' prints it).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", "-q", is_flag=True)
def harden(model, out, method, layers, from_report, data, attack, p, n_rows, template, lora, lora_r, epochs, max_steps, lr,
           batch_size, warmup_steps, cutoff, seed, save_steps, resume, gguf, threads, json_path, force, quiet):
    """SPPFT fine-tuning (safety layers frozen) and its baselines; writes a normal HF model folder."""
    from .harden import HardenConfig, run_harden
    from .report import harden_table

    _check_outputs(force, json_path)
    cfg = HardenConfig(out=out, model=model, method=method, layers=_range(layers), from_report=from_report, data=data,
                       attack=attack, p=p, n_rows=n_rows, template=template, lora=lora, lora_r=lora_r, epochs=epochs,
                       max_steps=max_steps, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps, cutoff=cutoff,
                       seed=seed, save_steps=save_steps, gguf=gguf, force=force, resume=resume, threads=threads)
    with reporter(quiet) as rep:
        report = run_harden(cfg, rep)

    _emit(report, json_path, None, force, lambda r: _out().print(harden_table(r, out)), None)


@main.group()
def reference():
    """The safety-aligned reference model, built reproducibly from the bundled SmolLM2 (MODEL 'reference')."""


@reference.command("build")
@click.option("--out", default=None, metavar="DIR", help="Default: the user cache, which is what MODEL 'reference' means.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--benign-rows", type=int, default=600, show_default=True,
              help="Self-distill the first N of the 797 Alpaca-train queries (the build-time budget).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (quick runs).")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", default=None, metavar="PATH", help="Also write the build report ('-' prints it).")
@click.option("--force", is_flag=True, help="Rebuild over an existing reference model.")
@click.option("--quiet", "-q", is_flag=True)
def reference_build(out, seed, epochs, benign_rows, max_steps, threads, json_path, force, quiet):
    """Safety-align the bundled SmolLM2 (refusals for AdvBench-train; its own answers to Alpaca-train and
    borderline requests); writes an HF folder + GGUF + manifest. A killed build resumes when re-run."""
    from .reference import ReferenceConfig, build_reference
    from .report import harden_table

    _check_outputs(force, json_path)
    cfg = ReferenceConfig(out=out, seed=seed, epochs=epochs, benign_rows=benign_rows, max_steps=max_steps, threads=threads, force=force)
    with reporter(quiet) as rep:
        report = build_reference(cfg, rep)
    _emit(report, json_path, None, force, lambda r: _out().print(harden_table(r, r["reference"]["path"])), None)


@reference.command("show")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def reference_show(seed, as_json):
    """Where the reference model is and how it was built (exit 2 when it is not built)."""
    from .reference import reference_dir, reference_model

    ref = reference_model(seed)
    folder = reference_dir(seed)
    info = json.loads((folder / "safety_audit.json").read_text())
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _out().print(f"{ref.label}\n  HF folder: {folder}\n  GGUF: {ref.path}\n  rows: {info['data']['rows_by_kind']}, "
                        f"steps {info['steps']}, train loss {info['train_loss']:.4f}, {info['seconds']} s", highlight=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema_version 1).")
def doctor(as_json):
    """Versions, compiled ops (CPU/CUDA), threads, and where the bundled model is."""
    from .doctor import collect, render

    info = collect()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        render(info, _out())


if __name__ == "__main__":
    main()
