"""safety-audit command line: parses options, calls a workflow, renders. Bad input -> one line, exit 2.

Option help and defaults come from the workflows' config dataclasses (`io.config.setting`), and choices
from the registries (backends, classifiers, metrics, harden methods), so they cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import __version__
from ..backends import BACKEND_CHOICES
from ..core.judge_formats import FORMATS as JUDGE_FORMATS
from ..errors import AuditError
from ..io.config import default_of
from ..io.files import atomic_write
from ..io.models import reference_dir, reference_model
from ..io.prompts import TEMPLATES
from ..render.commandline import AuditGroup, err
from ..render.plots import plot_locate, plot_scan
from ..render.progress import rich_reporter
from ..render.tables import (check_table, compare_table, doctor_table, eval_table, harden_table, locate_table, paired_table, stability_table,
                             print_scan)
from ..training.attacks import ATTACKS
from ..training.methods import METHODS
from ..workflows import doctor as doctor_mod
from ..workflows import gate
from ..workflows.evaluate import METRICS, EvalConfig, run_eval
from ..workflows.harden import GGUF_TYPES, HardenConfig, run_harden
from ..workflows.locate import LocateConfig, paper_compat, run_locate
from ..workflows.reference import ReferenceConfig, build_reference
from ..workflows.scan import ScanConfig, run_scan
from .audit import register as register_review_commands
from .settings import install as install_settings
from .common import (CLASSIFIER_CHOICE, check_outputs, classifier_option, emit, force_opt, json_opt, opt,
                     placement_options, quiet_opt, range_option, stdout, threads_opt)


@click.group(cls=AuditGroup)
@click.version_option(__version__, prog_name="safety-audit")
def main():
    """Find, verify and protect the safety layers of local open-weight LLMs."""


@main.command(short_help="Per-layer angle gap and the initial safety-layer range.")
@click.argument("model", required=False)
@opt(ScanConfig, "backend", "--backend", type=click.Choice(BACKEND_CHOICES))
@opt(ScanConfig, "template", "--template", type=click.Choice(TEMPLATES))
@opt(ScanConfig, "normal", "--normal")
@opt(ScanConfig, "malicious", "--malicious")
@opt(ScanConfig, "pairs", "--pairs", type=int)
@opt(ScanConfig, "bootstrap", "--bootstrap", type=int)
@opt(ScanConfig, "seed", "--seed", type=int)
@threads_opt
@opt(ScanConfig, "batch", "--batch", type=int, help="Prompts per forward pass (torch; default: up to 4,096 tokens).")
@placement_options(ScanConfig)
@opt(ScanConfig, "contrast", "--contrast", metavar="MODEL2")
@opt(ScanConfig, "contrast_backend", "--contrast-backend", type=click.Choice(BACKEND_CHOICES))
@opt(ScanConfig, "compat", "--compat", type=click.Choice(["paper"]))
@json_opt
@click.option("--plot", "plot_path", default=None, metavar="PATH.png", help="Write a two-panel PNG (cosines; angle gap with CI).")
@force_opt
@click.option("--no-cache", is_flag=True, help="Do not reuse or store cached hidden states.")
@quiet_opt
def scan(model, json_path, plot_path, force, no_cache, quiet, **kw):
    """Per-layer angle gap between normal and malicious prompts, and the initial safety-layer range.

    MODEL is a .gguf file, a Hugging Face model folder or 'reference'; omitted, the bundled SmolLM2-135M-Instruct.
    """
    check_outputs(force, json_path, plot_path)
    with rich_reporter(err, quiet) as rep:
        report = run_scan(ScanConfig(model=model, use_cache=not no_cache, **kw), rep)
    emit(report, json_path, plot_path, force, lambda r: print_scan(r, stdout()), plot_scan)


@main.command(short_help="Precise safety-layer bounds by scaling layers (paper Table 1).")
@click.argument("model", required=False)
@opt(LocateConfig, "backend", "--backend", type=click.Choice(BACKEND_CHOICES))
@opt(LocateConfig, "template", "--template", type=click.Choice(TEMPLATES))
@opt(LocateConfig, "from_scan", "--from-scan", metavar="SCAN.json")
@opt(LocateConfig, "start", "--start", metavar="i-j", callback=range_option)
@opt(LocateConfig, "survey", "--survey", type=int, is_flag=False, flag_value=2, metavar="[W]", default=None)
@opt(LocateConfig, "alpha", "--alpha", type=float)
@opt(LocateConfig, "classifier", "--classifier", type=CLASSIFIER_CHOICE, callback=classifier_option)
@opt(LocateConfig, "over_refusal", "--over-refusal")
@opt(LocateConfig, "limit", "--limit", type=int)
@opt(LocateConfig, "max_new_tokens", "--max-new-tokens", type=int)
@opt(LocateConfig, "patience", "--patience", type=int)
@opt(LocateConfig, "starts", "--starts", metavar="i-j,...|auto")
@opt(LocateConfig, "resamples", "--resamples", type=int)
@click.option("--no-controls", is_flag=True, help="Skip the equal-width control ranges.")
@opt(LocateConfig, "compat", "--compat", type=click.Choice(["paper"]))
@threads_opt
@opt(LocateConfig, "batch", "--batch", type=int)
@placement_options(LocateConfig)
@click.option("--json", "json_path", default=None, metavar="PATH",
              help="Write the JSON report; '-' prints it. A journal PATH.journal.jsonl makes the run resumable.")
@click.option("--plot", "plot_path", default=None, metavar="PATH.png", help="Write the sweep as a PNG.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs (the journal is kept and reused).")
@quiet_opt
def locate(model, limit, no_controls, compat, json_path, plot_path, force, quiet, **kw):
    """Precise safety-layer bounds: scale a layer range by α and count over-refusals (paper Table 1)."""
    check_outputs(force, json_path, plot_path)
    cfg = LocateConfig(model=model, limit=limit or None, controls=not no_controls,
                       journal=f"{json_path}.journal.jsonl" if json_path and json_path != "-" else None, **kw)
    if compat == "paper":
        cfg = paper_compat(cfg)
    with rich_reporter(err, quiet) as rep:
        report = run_locate(cfg, rep)
    emit(report, json_path, plot_path, force, lambda r: [stdout().print(t) for t in (locate_table(r), stability_table(r)) if t],
         plot_locate)


def _csv(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(x.strip() for x in items if x.strip())


METRICS_HELP = "Comma list of: " + "; ".join(f"{n} ({m.help})" for n, m in METRICS.items()) + "."


@main.command("eval", short_help="Harmful rate, judge score, over-refusal, Rouge-L, MMLU.")
@click.argument("model", required=False)
@opt(EvalConfig, "backend", "--backend", type=click.Choice(BACKEND_CHOICES))
@opt(EvalConfig, "template", "--template", type=click.Choice(["auto", *TEMPLATES]))
@opt(EvalConfig, "metrics", "--metrics", default=",".join(default_of(EvalConfig, "metrics")), help=METRICS_HELP)
@opt(EvalConfig, "harmful", "--harmful")
@opt(EvalConfig, "over_refusal", "--over-refusal", default=",".join(default_of(EvalConfig, "over_refusal")))
@opt(EvalConfig, "task", "--task")
@opt(EvalConfig, "classifier", "--classifier", type=CLASSIFIER_CHOICE, callback=classifier_option)
@opt(EvalConfig, "max_new_tokens", "--max-new-tokens", type=int)
@opt(EvalConfig, "limit", "--limit", type=int)
@opt(EvalConfig, "judge_url", "--judge", metavar="URL")
@opt(EvalConfig, "judge_model", "--judge-model", metavar="FILE.gguf")
@opt(EvalConfig, "judge_timeout", "--judge-timeout", type=float, metavar="SECONDS")
@opt(EvalConfig, "judge_api_key_env", "--judge-api-key-env", metavar="VAR")
@opt(EvalConfig, "judge_format", "--judge-format", type=click.Choice(list(JUDGE_FORMATS)))
@opt(EvalConfig, "kl_base", "--base", metavar="MODEL")
@opt(EvalConfig, "kl_positions", "--kl-positions", type=int, metavar="K")
@opt(EvalConfig, "kl_prompts", "--kl-prompts", metavar="SET|FILE")
@opt(EvalConfig, "responses", "--responses", metavar="FILE.jsonl")
@click.option("--save-responses", default=None, metavar="FILE.jsonl", help="Save every generated response.")
@opt(EvalConfig, "bootstrap", "--bootstrap", type=int)
@opt(EvalConfig, "seed", "--seed", type=int)
@threads_opt
@opt(EvalConfig, "batch", "--batch", type=int)
@placement_options(EvalConfig)
@opt(EvalConfig, "base_url", "--base-url", metavar="URL")
@opt(EvalConfig, "served_model", "--model", metavar="NAME")
@opt(EvalConfig, "api_key_env", "--api-key-env", metavar="VAR")
@opt(EvalConfig, "allow_insecure_http", "--allow-insecure-http", is_flag=True)
@json_opt
@force_opt
@click.option("--no-cache", is_flag=True, help="Do not journal or reuse finished answers (a killed run then starts over).")
@quiet_opt
def eval_cmd(model, metrics, over_refusal, save_responses, json_path, force, no_cache, quiet, **kw):
    """Harmful rate, judge score, over-refusal, Rouge-L and MMLU of a model, with bootstrap 95% CIs."""
    check_outputs(force, json_path, save_responses)
    cfg = EvalConfig(model=model, metrics=_csv(metrics), over_refusal=_csv(over_refusal), keep_responses=bool(save_responses),
                     use_cache=not no_cache, **kw)
    try:
        with rich_reporter(err, quiet) as rep:
            report = run_eval(cfg, rep)
    except AuditError:
        if save_responses and cfg.saved:  # nothing generated is lost: re-run with --responses to continue
            _save_responses(save_responses, cfg.saved, force)
            err.print(f"kept {len(cfg.saved)} responses in {save_responses}: re-run with --responses {save_responses}",
                      markup=False)
        raise
    if save_responses:
        _save_responses(save_responses, cfg.saved, force)
        err.print(f"wrote {save_responses}", markup=False)
    emit(report, json_path, None, force, lambda r: stdout().print(eval_table(r)))


def _save_responses(path, rows, force: bool) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda t: t.write_text(lines), force)


def _limit_options(f):
    for metric, (opt_name, direction, default) in reversed(gate.THRESHOLDS.items()):
        what = "increase" if direction == "increase" else "drop"
        f = click.option(f"--{opt_name.replace('_', '-')}", opt_name, type=float, default=None,
                         help=f"Largest allowed {what} of {gate.LABELS[metric]} (default {default}).")(f)
    return f


@main.command(short_help="Release gate: a candidate against a baseline eval (exit 1 regression, 3 inconclusive).")
@click.argument("candidate")
@click.option("--baseline", required=True, metavar="BASE.json", help="The baseline eval report.")
@_limit_options
@click.option("--policy", default=None, metavar="FILE.toml", help="Thresholds from a TOML file ([thresholds] max_... = x).")
@click.option("--judge", "judge_url", default=None, metavar="URL", help="Judge for a model CANDIDATE when the baseline records none.")
@click.option("--judge-model", default=None, metavar="FILE.gguf", help="A local GGUF judge, likewise.")
@click.option("--judge-api-key-env", default=None, metavar="VAR", help="The environment variable with the judge's API key.")
@click.option("--inconclusive", type=click.Choice(gate.INCONCLUSIVE), default="fail", show_default=True,
              help="What a verdict the prompts cannot decide does: fail (exit 3: a gate does not pass what it cannot "
                   "see) or pass (exit 0, said in the output).")
@click.option("--junit", default=None, metavar="PATH.xml", help="Write JUnit XML for CI systems.")
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the verdict as JSON; '-' prints it.")
@force_opt
@quiet_opt
def check(candidate, baseline, policy, judge_url, judge_model, judge_api_key_env, inconclusive, junit, json_path, force,
          quiet, **limits):
    """Release gate: CANDIDATE (an eval JSON, or a model evaluated like the baseline) vs --baseline. Two reports
    measured differently (other prompts, limit, classifier, template, token budget or judge) are refused.
    Each metric's change gets a 95% interval (paired over prompts where both reports allow) and a verdict:
    PASS (a change beyond the margin is ruled out), REGRESSION (beyond the margin, and not noise), or
    INCONCLUSIVE (too few prompts to tell; it says how many would). Exit 0 pass, 1 regression,
    3 inconclusive, 2 bad input."""
    check_outputs(force, json_path, junit)
    base = gate.load_eval(baseline)
    chosen = {**(gate.load_policy(policy) if policy else {}), **{k: v for k, v in limits.items() if v is not None}}
    if gate.is_eval_report(candidate):
        cand = gate.load_eval(candidate)
    else:
        with rich_reporter(err, quiet) as rep:
            cand = gate.evaluate_like(candidate, base, judge_url, judge_model, rep, judge_api_key_env)
    result = gate.check_report(cand, base, chosen, inconclusive, candidate if gate.is_eval_report(candidate) else None)
    rows = result["checks"]

    def render(r):
        console = stdout()
        console.print(check_table(r, rows))
        console.print(VERDICT_LINE[r["verdict"]] + (" (passed by --inconclusive pass)" if r["verdict"] == "inconclusive"
                                                      and r["passed"] else ""))

    emit(result, json_path, None, force, render)
    if junit:
        xml = gate.junit_xml(rows, str(cand.get("model")))
        atomic_write(junit, lambda t: t.write_text(xml), force)
    sys.exit(gate.exit_code(result))


VERDICT_LINE = {"pass": "[green]PASS[/green]", "regression": "[red]REGRESSION[/red]",
                "inconclusive": "[yellow]INCONCLUSIVE[/yellow]: the prompts cannot tell; see each row for how many would"}


@main.command(short_help="Eval reports side by side; --paired: a per-prompt test.")
@click.argument("reports", nargs=-1, required=True)
@click.option("--paired", is_flag=True, help="REPORTS are two saved-responses files (eval --save-responses): exact McNemar test per refusal metric.")
@opt(EvalConfig, "classifier", "--classifier", type=CLASSIFIER_CHOICE, callback=classifier_option)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def compare(reports, paired, classifier, as_json):
    """Side-by-side table of eval reports (rows R_h, S_h, over-refusal, Rouge-L, MMLU; a column per report);
    with --paired, two models' saved responses compared prompt by prompt."""
    names = [Path(p).stem for p in reports]
    if paired:
        if len(reports) != 2:
            raise AuditError(f"--paired compares exactly two responses files, not {len(reports)}")
        rows = gate.paired_rows(reports[0], reports[1], classifier)
        if as_json:
            click.echo(json.dumps({"schema_version": 2, "command": "compare", "paired": True, "columns": names,
                                   "classifier": classifier, "rows": rows}, indent=2))
        else:
            stdout().print(paired_table(names, rows, classifier))
        return
    reps = [gate.load_eval(p) for p in reports]
    rows = gate.compare_rows(reps)
    settings = [gate.report_settings(r) for r in reps]
    if as_json:
        click.echo(json.dumps({"schema_version": 2, "command": "compare", "columns": names, "settings": settings,
                               "rows": [{"metric": m, "values": v} for m, v in rows]}, indent=2))
        return
    stdout().print(compare_table(names, rows, settings))


@main.command(short_help="SPPFT fine-tuning (safety layers frozen) and its baselines.")
@click.argument("model", required=False)
@opt(HardenConfig, "out", "--out", required=True, metavar="DIR", default=None, show_default=False)
@opt(HardenConfig, "method", "--method", type=click.Choice(list(METHODS)))
@opt(HardenConfig, "layers", "--layers", metavar="i-j", callback=range_option)
@opt(HardenConfig, "from_report", "--from-report", metavar="JSON")
@opt(HardenConfig, "data", "--data", metavar="FILE")
@opt(HardenConfig, "attack", "--attack", type=click.Choice(ATTACKS))
@opt(HardenConfig, "p", "--p", type=float)
@opt(HardenConfig, "n_rows", "--rows", type=int)
@opt(HardenConfig, "template", "--template", type=click.Choice(["alpaca", "chat"]))
@opt(HardenConfig, "lora", "--lora", is_flag=True)
@opt(HardenConfig, "lora_r", "--lora-r", type=int)
@opt(HardenConfig, "epochs", "--epochs", type=float)
@opt(HardenConfig, "max_steps", "--max-steps", type=int)
@opt(HardenConfig, "lr", "--lr", type=float)
@opt(HardenConfig, "batch_size", "--batch-size", type=int)
@opt(HardenConfig, "warmup_steps", "--warmup-steps", type=int)
@opt(HardenConfig, "cutoff", "--cutoff", type=int)
@opt(HardenConfig, "seed", "--seed", type=int)
@opt(HardenConfig, "save_steps", "--save-steps", type=int)
@opt(HardenConfig, "lisa_align_steps", "--lisa-align-steps", type=int)
@opt(HardenConfig, "lisa_task_steps", "--lisa-task-steps", type=int)
@opt(HardenConfig, "lisa_rho", "--lisa-rho", type=float)
@opt(HardenConfig, "resume", "--resume", is_flag=True)
@opt(HardenConfig, "gguf", "--gguf", type=click.Choice(GGUF_TYPES))
@threads_opt
@click.option("--json", "json_path", default=None, metavar="PATH", help="Also write the run report ('-' prints it).")
@opt(HardenConfig, "force", "--force", is_flag=True)
@quiet_opt
def harden(model, json_path, quiet, **kw):
    """SPPFT fine-tuning (safety layers frozen) and its baselines; writes a normal HF model folder."""
    check_outputs(kw["force"], json_path)
    with rich_reporter(err, quiet) as rep:
        report = run_harden(HardenConfig(model=model, **kw), rep)
    emit(report, json_path, None, kw["force"], lambda r: stdout().print(harden_table(r, kw["out"])))


@main.group(short_help="The safety-aligned reference model (build, show).")
def reference():
    """The safety-aligned reference model, built reproducibly from the bundled SmolLM2 (MODEL 'reference')."""


@reference.command("build")
@opt(ReferenceConfig, "out", "--out", metavar="DIR")
@opt(ReferenceConfig, "base", "--base", metavar="MODEL")
@opt(ReferenceConfig, "distill_tokens", "--distill-tokens", type=int)
@opt(ReferenceConfig, "seed", "--seed", type=int)
@opt(ReferenceConfig, "epochs", "--epochs", type=float)
@opt(ReferenceConfig, "benign_rows", "--benign-rows", type=int)
@opt(ReferenceConfig, "max_steps", "--max-steps", type=int)
@threads_opt
@click.option("--json", "json_path", default=None, metavar="PATH", help="Also write the build report ('-' prints it).")
@opt(ReferenceConfig, "force", "--force", is_flag=True)
@quiet_opt
def reference_build(json_path, quiet, **kw):
    """Safety-align the bundled SmolLM2 (refusals for AdvBench-train; its own answers to Alpaca-train and
    borderline requests); writes an HF folder + GGUF + manifest. A killed build resumes when re-run."""
    check_outputs(kw["force"], json_path)
    with rich_reporter(err, quiet) as rep:
        report = build_reference(ReferenceConfig(**kw), rep)
    emit(report, json_path, None, kw["force"], lambda r: stdout().print(harden_table(r, r["reference"]["path"])))


@reference.command("show")
@click.option("--seed", type=int, default=0, show_default=True, help="Which reference build.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def reference_show(seed, as_json):
    """Where the reference model is and how it was built (exit 2 when it is not built)."""
    ref = reference_model(seed)
    info = json.loads((reference_dir(seed) / "safety_audit.json").read_text())
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        stdout().print(f"{ref.label}\n  HF folder: {reference_dir(seed)}\n  GGUF: {ref.path}\n  rows: {info['data']['rows_by_kind']}, "
                     f"steps {info['steps']}, train loss {info['train_loss']:.4f}, {info['seconds']} s", highlight=False)


@main.command(short_help="What this installation has: versions, CPU, compiled core.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema_version 2).")
def doctor(as_json):
    """Versions, CPU features, compiled ops (CPU/CUDA), threads, and where the bundled model is."""
    info = doctor_mod.collect()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        stdout().print(doctor_table(info))


register_review_commands(main)
install_settings(main)  # last: every command's options get SAFETY_AUDIT_<OPTION> and --config FILE

if __name__ == "__main__":
    main()
