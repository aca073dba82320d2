"""The review commands: `attention` (the paper's Figure 4), `audit` (every step in one folder) and
`report` (one self-contained HTML page, or a model card's markdown section)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from ..backends import BACKEND_CHOICES
from ..io.prompts import TEMPLATES
from ..render.commandline import err, one_line
from ..render.page import load_bundle, page_facts, render_html, render_markdown, write_page
from ..render.plots import plot_attention, plot_locate, plot_scan
from ..render.progress import rich_reporter
from ..render.tables import attention_table
from ..workflows.attention import AttentionConfig, run_attention
from ..workflows.audit import AuditConfig, record_written, run_audit
from .common import (check_outputs, emit, force_opt, json_opt, opt, placement_options, quiet_opt, range_option, stdout,
                     threads_opt)

PLOTS = {"scan": plot_scan, "locate": plot_locate, "attention": plot_attention}


@click.command(short_help="Figure 4: final-token attention per layer, malicious vs normal.")
@click.argument("model", required=False)
@click.argument("malicious", required=False)
@click.argument("normal", required=False)
@opt(AttentionConfig, "backend", "--backend", type=click.Choice(BACKEND_CHOICES))
@opt(AttentionConfig, "template", "--template", type=click.Choice(TEMPLATES))
@opt(AttentionConfig, "layers", "--layers", metavar="i-j", callback=range_option)
@opt(AttentionConfig, "heads", "--heads", metavar="mean|max|N")
@opt(AttentionConfig, "from_report", "--from-report", metavar="LOCATE.json|SCAN.json")
@opt(AttentionConfig, "scale", "--scale", metavar="i-j", callback=range_option)
@opt(AttentionConfig, "alpha", "--alpha", type=float)
@threads_opt
@placement_options(AttentionConfig)
@json_opt
@click.option("--plot", "plot_path", default="attention.png", show_default=True, metavar="PATH.png",
              help="Write the heatmaps as a PNG ('' for none).")
@force_opt
@quiet_opt
def attention(model, json_path, plot_path, force, quiet, **kw):
    """Heatmaps of where the final token attends (layers × tokens), a MALICIOUS and a NORMAL prompt side by
    side, the safety layers dashed; per layer, the share on content words vs template and function words.

    MODEL as for scan (omitted: the bundled model); the prompts default to the first of the bundled sets.
    """
    check_outputs(force, json_path, plot_path or None)
    with rich_reporter(err, quiet) as rep:
        report = run_attention(AttentionConfig(model=model, **kw), rep)
    emit(report, json_path, plot_path or None, force, lambda r: stdout().print(attention_table(r)), plot_attention)


@click.command(short_help="Pre-release audit: every step, one folder, one HTML page.")
@click.argument("model", required=False)
@opt(AuditConfig, "out", "--out", required=True, metavar="DIR", default=None, show_default=False)
@opt(AuditConfig, "baseline", "--baseline", metavar="BASE_EVAL.json")
@opt(AuditConfig, "base", "--base", metavar="MODEL")
@opt(AuditConfig, "quick", "--quick", is_flag=True)
@opt(AuditConfig, "inconclusive", "--inconclusive", type=click.Choice(["fail", "pass"]))
@opt(AuditConfig, "backend", "--backend", type=click.Choice(BACKEND_CHOICES))
@opt(AuditConfig, "template", "--template", type=click.Choice(TEMPLATES))
@threads_opt
@opt(AuditConfig, "batch", "--batch", type=int)
@placement_options(AuditConfig)
@opt(AuditConfig, "force", "--force", is_flag=True)
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the audit's summary (steps, verdict, files; schema_version 2); '-' prints it.")
@quiet_opt
def audit(model, quiet, json_path, **kw):
    """Everything a release reviewer needs, in DIR: scan (contrast with --base), locate, eval (like
    --baseline), attention, check; each step's JSON and PNG, report.html and report.md. A killed audit
    continues where it stopped when re-run. Exit 0 pass (or no baseline), 1 regression, 3 inconclusive (the
    prompts cannot tell), 2 bad input."""
    def plots(name, report, out: Path):
        if name in PLOTS:
            record_written(out, [f"{name}.png"])  # before writing it: a later --force may remove only what is recorded
            PLOTS[name](report, out / f"{name}.png", force=True)

    with rich_reporter(err, quiet) as rep:
        result = run_audit(AuditConfig(model=model, **kw), rep, plots)
    out = Path(result["folder"])
    bundle = load_bundle([out])
    record_written(out, ["report.html", "report.md"])
    write_page(render_html(bundle), out / "report.html", force=True)
    write_page(render_markdown(bundle), out / "report.md", force=True)
    summary = {"schema_version": 2, "command": "audit", **result,
               "files": sorted(p.name for p in out.iterdir() if not p.name.startswith("."))}

    def render(r):
        console = stdout()
        for step, state in r["steps"].items():
            console.print(f"{step:10} {state}", highlight=False)
        verdict = {None: "no baseline: no verdict", "pass": "[green]PASS[/green]", "regression": "[red]REGRESSION[/red]",
                   "inconclusive": "[yellow]INCONCLUSIVE[/yellow] (too few prompts to tell)"}
        console.print(f"{verdict[r.get('verdict')]}  ·  {escape(one_line(str(out / 'report.html')))}")

    emit(summary, json_path, None, True, render)
    sys.exit(result["exit_code"])


@click.command(short_help="One self-contained HTML page (or markdown) from reports.")
@click.argument("sources", nargs=-1, required=True, metavar="DIR|JSON...")
@click.option("--html", "html_path", default=None, metavar="OUT.html", help="Write the page (plots embedded, nothing fetched).")
@click.option("--markdown", "md_path", default=None, metavar="OUT.md", help="Write a model card's 'Safety evaluation' section.")
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the page's facts (verdict, metrics, safety layers, provenance; schema_version 2); '-' prints them.")
@force_opt
def report(sources, html_path, md_path, json_path, force):
    """The verdict first, then scan, locate, eval (with the baseline's CIs), attention and provenance, from
    an audit folder or any scan/locate/eval/attention/check JSON reports. Without --html/--markdown the
    markdown goes to stdout."""
    check_outputs(force, html_path, md_path, json_path)
    bundle = load_bundle(list(sources))
    if json_path:
        emit(page_facts(bundle), json_path, None, force, lambda r: None)
    if html_path:
        write_page(render_html(bundle), html_path, force)
        err.print(f"wrote {html_path}", markup=False)
    if md_path:
        write_page(render_markdown(bundle), md_path, force)
        err.print(f"wrote {md_path}", markup=False)
    if not (html_path or md_path or json_path):
        click.echo(render_markdown(bundle))


def register(group: click.Group) -> None:
    for command in (attention, audit, report):
        group.add_command(command)
