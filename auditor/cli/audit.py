"""The review commands: `attention` (the paper's Figure 4), `audit` (every step in one folder) and
`report` (one self-contained HTML page, or a model card's markdown section)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from ..render.page import load_bundle, page_facts, render_html, render_markdown, write_page
from ..render.plots import plot_attention, plot_locate, plot_scan
from ..render.progress import rich_reporter
from ..render.tables import attention_table, one_line
from ..workflows.attention import AttentionConfig, run_attention
from ..workflows.audit import AuditConfig, record_written, run_audit
from .commandline import err
from .common import REMOTE, check_outputs, configs, emit, options, stdout
from .outputs import AttentionOutput, AuditOutput, PageOutput

PLOTS = {"scan": plot_scan, "locate": plot_locate, "attention": plot_attention}


@click.command(short_help="Figure 4: final-token attention per layer, malicious vs normal.")
@click.argument("model", required=False)
@click.argument("malicious", required=False)
@click.argument("normal", required=False)
@options(AttentionConfig, skip=(*REMOTE, "batch"))
@options(AttentionOutput)
def attention(model, malicious, normal, **kw):
    """Heatmaps of where the final token attends (layers × tokens), a MALICIOUS and a NORMAL prompt side by
    side, the safety layers dashed; per layer, the share on content words vs template and function words.

    MODEL as for scan (omitted: the bundled model); the prompts default to the first of the bundled sets.
    """
    cfg, out = configs(kw, AttentionConfig, AttentionOutput, model=model, malicious=malicious, normal=normal)
    check_outputs(out.force, out.json_path, out.plot_path or None)
    with rich_reporter(err, out.quiet) as rep:
        report = run_attention(cfg, rep)
    emit(report, out.json_path, out.plot_path or None, out.force, lambda r: stdout().print(attention_table(r)), plot_attention)


@click.command(short_help="Pre-release audit: every step, one folder, one HTML page.")
@click.argument("model", required=False)
@options(AuditConfig, skip=REMOTE)
@options(AuditOutput)
def audit(model, **kw):
    """Everything a release reviewer needs, in DIR: scan (contrast with --base), locate, eval (like
    --baseline), attention, check; each step's JSON and PNG, report.html and report.md. A killed audit
    continues where it stopped when re-run. Exit 0 pass (or no baseline), 1 regression, 3 inconclusive (the
    prompts cannot tell), 2 bad input."""
    def plots(name, report, out: Path):
        if name in PLOTS:
            record_written(out, [f"{name}.png"])  # before writing it: a later --force may remove only what is recorded
            PLOTS[name](report, out / f"{name}.png", force=True)

    cfg, out_opts = configs(kw, AuditConfig, AuditOutput, model=model)
    with rich_reporter(err, out_opts.quiet) as rep:
        result = run_audit(cfg, rep, plots)
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

    emit(summary, out_opts.json_path, None, True, render)
    sys.exit(result["exit_code"])


@click.command(short_help="One self-contained HTML page (or markdown) from reports.")
@click.argument("sources", nargs=-1, required=True, metavar="DIR|JSON...")
@options(PageOutput)
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
