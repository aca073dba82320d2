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
from ..errors import AuditError
from ..io.files import atomic_write
from ..io.models import reference_dir, reference_model
from ..render.plots import plot_locate, plot_scan
from ..render.progress import rich_reporter
from ..render.tables import (check_table, compare_table, doctor_table, eval_table, harden_table, locate_table, paired_table, stability_table,
                             print_scan)
from ..workflows import doctor as doctor_mod
from ..workflows import gate
from ..workflows.evaluate import EvalConfig, run_eval
from ..training.methods import METHODS
from ..workflows.harden import HardenConfig, run_harden
from ..workflows.locate import LocateConfig, run_locate
from ..workflows.reference import ReferenceConfig, build_reference
from ..workflows.scan import ScanConfig, run_scan
from .audit import register as register_review_commands
from .commandline import AuditGroup, err
from .common import REMOTE, check_outputs, configs, emit, options, stdout
from .outputs import (CheckOutput, CompareOptions, DoctorOptions, EvalOutput, LocateOutput, RunOutput, ScanOutput,
                      ShowOptions)
from .settings import install as install_settings


@click.group(cls=AuditGroup)
@click.version_option(__version__, prog_name="safety-audit")
def main():
    """Find, verify and protect the safety layers of local open-weight LLMs."""


@main.command(short_help="Per-layer angle gap and the initial safety-layer range.")
@click.argument("model", required=False)
@options(ScanConfig, skip=REMOTE)
@options(ScanOutput)
def scan(model, **kw):
    """Per-layer angle gap between normal and malicious prompts, and the initial safety-layer range.

    MODEL is a .gguf file, a Hugging Face model folder or 'reference'; omitted, the bundled SmolLM2-135M-Instruct.
    """
    cfg, out = configs(kw, ScanConfig, ScanOutput, model=model)
    check_outputs(out.force, out.json_path, out.plot_path)
    with rich_reporter(err, out.quiet) as rep:
        report = run_scan(cfg, rep)
    emit(report, out.json_path, out.plot_path, out.force, lambda r: print_scan(r, stdout()), plot_scan)


@main.command(short_help="Precise safety-layer bounds by scaling layers (paper Table 1).")
@click.argument("model", required=False)
@options(LocateConfig, skip=REMOTE)
@options(LocateOutput)
def locate(model, **kw):
    """Precise safety-layer bounds: scale a layer range by α and count over-refusals (paper Table 1)."""
    cfg, out = configs(kw, LocateConfig, LocateOutput, model=model)
    check_outputs(out.force, out.json_path, out.plot_path)
    if out.json_path and out.json_path != "-":
        cfg.journal = f"{out.json_path}.journal.jsonl"
    with rich_reporter(err, out.quiet) as rep:
        report = run_locate(cfg, rep)
    emit(report, out.json_path, out.plot_path, out.force,
         lambda r: [stdout().print(t) for t in (locate_table(r), stability_table(r)) if t], plot_locate)


@main.command("eval", short_help="Harmful rate, judge score, over-refusal, Rouge-L, MMLU.")
@click.argument("model", required=False)
@options(EvalConfig)
@options(EvalOutput)
def eval_cmd(model, **kw):
    """Harmful rate, judge score, over-refusal, Rouge-L and MMLU of a model, with bootstrap 95% CIs."""
    cfg, out = configs(kw, EvalConfig, EvalOutput, model=model)
    check_outputs(out.force, out.json_path, out.save_responses)
    cfg.keep_responses = bool(out.save_responses)
    try:
        with rich_reporter(err, out.quiet) as rep:
            report = run_eval(cfg, rep)
    except AuditError:
        if out.save_responses and cfg.saved:  # nothing generated is lost: re-run with --responses to continue
            _save_responses(out.save_responses, cfg.saved, out.force)
            err.print(f"kept {len(cfg.saved)} responses in {out.save_responses}: re-run with --responses "
                      f"{out.save_responses}", markup=False)
        raise
    if out.save_responses:
        _save_responses(out.save_responses, cfg.saved, out.force)
        err.print(f"wrote {out.save_responses}", markup=False)
    emit(report, out.json_path, None, out.force, lambda r: stdout().print(eval_table(r)))


def _save_responses(path, rows, force: bool) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda t: t.write_text(lines), force)


@main.command(short_help="Release gate: a candidate against a baseline eval (exit 1 regression, 3 inconclusive).")
@click.argument("candidate")
@options(gate.CheckConfig)
@options(CheckOutput)
def check(candidate, **kw):
    """Release gate: CANDIDATE (an eval JSON, or a model evaluated like the baseline) vs --baseline. Two reports
    measured differently (other prompts, limit, classifier, template, token budget or judge) are refused.
    Each metric's change gets a 95% interval (paired over prompts where both reports allow) and a verdict:
    PASS (a change beyond the margin is ruled out), REGRESSION (beyond the margin, and not noise), or
    INCONCLUSIVE (too few prompts to tell; it says how many would). Exit 0 pass, 1 regression,
    3 inconclusive, 2 bad input."""
    cfg, out = configs(kw, gate.CheckConfig, CheckOutput)
    check_outputs(out.force, out.json_path, out.junit)
    base = gate.load_eval(cfg.baseline)
    limits = {opt: getattr(cfg, opt) for opt, _, _ in gate.THRESHOLDS.values() if getattr(cfg, opt) is not None}
    chosen = {**(gate.load_policy(cfg.policy) if cfg.policy else {}), **limits}
    if gate.is_eval_report(candidate):
        cand = gate.load_eval(candidate)
    else:
        with rich_reporter(err, out.quiet) as rep:
            cand = gate.evaluate_like(candidate, base, cfg.judge_url, cfg.judge_model, rep, cfg.judge_api_key_env)
    result = gate.check_report(cand, base, chosen, cfg.inconclusive, candidate if gate.is_eval_report(candidate) else None)
    rows = result["checks"]

    def render(r):
        console = stdout()
        console.print(check_table(r, rows))
        console.print(VERDICT_LINE[r["verdict"]] + (" (passed by --inconclusive pass)" if r["verdict"] == "inconclusive"
                                                      and r["passed"] else ""))

    emit(result, out.json_path, None, out.force, render)
    if out.junit:
        xml = gate.junit_xml(rows, str(cand.get("model")))
        atomic_write(out.junit, lambda t: t.write_text(xml), out.force)
    sys.exit(gate.exit_code(result))


VERDICT_LINE = {"pass": "[green]PASS[/green]", "regression": "[red]REGRESSION[/red]",
                "inconclusive": "[yellow]INCONCLUSIVE[/yellow]: the prompts cannot tell; see each row for how many would"}


@main.command(short_help="Eval reports side by side; --paired: a per-prompt test.")
@click.argument("reports", nargs=-1, required=True)
@options(CompareOptions)
@options(EvalConfig, skip=tuple(f for f in EvalConfig.__dataclass_fields__ if f != "classifier"))
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


def method_options(fn):
    """Each harden method's own settings (its `Settings` class) as options: --lisa-rho and the like."""
    for method in reversed(list(METHODS.values())):
        if method.Settings is not None:
            fn = options(method.Settings, prefix=f"{method.name}__")(fn)
    return fn


@main.command(short_help="SPPFT fine-tuning (safety layers frozen) and its baselines.")
@click.argument("model", required=False)
@options(HardenConfig)
@method_options
@options(RunOutput)
def harden(model, **kw):
    """SPPFT fine-tuning (safety layers frozen) and its baselines; writes a normal HF model folder."""
    cfg, out = configs(kw, HardenConfig, RunOutput, model=model)
    if (settings := METHODS[cfg.method].Settings) is not None:
        cfg.method_settings, = configs(kw, settings, prefix=f"{cfg.method}__")
    check_outputs(cfg.force, out.json_path)
    with rich_reporter(err, out.quiet) as rep:
        report = run_harden(cfg, rep)
    emit(report, out.json_path, None, cfg.force, lambda r: stdout().print(harden_table(r, cfg.out)))


@main.group(short_help="The safety-aligned reference model (build, show).")
def reference():
    """The safety-aligned reference model, built reproducibly from the bundled SmolLM2 (MODEL 'reference')."""


@reference.command("build")
@options(ReferenceConfig)
@options(RunOutput)
def reference_build(**kw):
    """Safety-align the bundled SmolLM2 (refusals for AdvBench-train; its own answers to Alpaca-train and
    borderline requests); writes an HF folder + GGUF + manifest. A killed build resumes when re-run."""
    cfg, out = configs(kw, ReferenceConfig, RunOutput)
    check_outputs(cfg.force, out.json_path)
    with rich_reporter(err, out.quiet) as rep:
        report = build_reference(cfg, rep)
    emit(report, out.json_path, None, cfg.force, lambda r: stdout().print(harden_table(r, r["reference"]["path"])))


@reference.command("show")
@options(ShowOptions)
def reference_show(seed, recipe, as_json):
    """Where the reference model is and how it was built (exit 2 when it is not built)."""
    ref = reference_model(seed, recipe)
    info = json.loads((reference_dir(seed, recipe) / "safety_audit.json").read_text())
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        stdout().print(f"{ref.label}\n  HF folder: {reference_dir(seed, recipe)}\n  GGUF: {ref.path}\n  rows: {info['data']['rows_by_kind']}, "
                     f"steps {info['steps']}, train loss {info['train_loss']:.4f}, {info['seconds']} s", highlight=False)


@main.command(short_help="What this installation has: versions, CPU, compiled core.")
@options(DoctorOptions)
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
