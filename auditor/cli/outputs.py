"""The settings of the commands that are about their output, not their computation (where the JSON goes, a
plot, overwriting, progress bars), and the few commands whose options are all of that kind. Dataclasses like
the workflows' configs, so the same `options` generator makes them and every option is a config field."""

from __future__ import annotations

from dataclasses import dataclass

from ..io.config import setting
from ..io.models import REFERENCE_RECIPES

JSON_HELP = "Write the JSON report (schema_version 2); '-' prints it to stdout."


@dataclass
class Output:
    json_path: str | None = setting(None, JSON_HELP, flag="--json", metavar="PATH")
    force: bool = setting(False, "Overwrite existing outputs.")
    quiet: bool = setting(False, "No progress bars.", flag=("--quiet", "-q"))


@dataclass
class ScanOutput(Output):
    plot_path: str | None = setting(None, "Write a two-panel PNG (cosines; angle gap with CI).", flag="--plot",
                                    metavar="PATH.png")


@dataclass
class LocateOutput(Output):
    json_path: str | None = setting(None, "Write the JSON report; '-' prints it. A journal PATH.journal.jsonl makes the "
                                          "run resumable.", flag="--json", metavar="PATH")
    plot_path: str | None = setting(None, "Write the sweep as a PNG.", flag="--plot", metavar="PATH.png")
    force: bool = setting(False, "Overwrite existing outputs (the journal is kept and reused).")


@dataclass
class EvalOutput(Output):
    save_responses: str | None = setting(None, "Save every generated response.", metavar="FILE.jsonl")


@dataclass
class AttentionOutput(Output):
    plot_path: str = setting("attention.png", "Write the heatmaps as a PNG ('' for none).", flag="--plot",
                             metavar="PATH.png")


@dataclass
class RunOutput:
    """harden, reference build and audit: their --force is a setting of the run itself (what it may replace)."""

    json_path: str | None = setting(None, "Also write the run report ('-' prints it).", flag="--json", metavar="PATH")
    quiet: bool = setting(False, "No progress bars.", flag=("--quiet", "-q"))


@dataclass
class AuditOutput(RunOutput):
    json_path: str | None = setting(None, "Write the audit's summary (steps, verdict, files; schema_version 2); '-' "
                                          "prints it.", flag="--json", metavar="PATH")


@dataclass
class CheckOutput(Output):
    junit: str | None = setting(None, "Write JUnit XML for CI systems.", metavar="PATH.xml")
    json_path: str | None = setting(None, "Write the verdict as JSON; '-' prints it.", flag="--json", metavar="PATH")


@dataclass
class CompareOptions:
    paired: bool = setting(False, "REPORTS are two saved-responses files (eval --save-responses): exact McNemar test "
                                  "per refusal metric.")
    as_json: bool = setting(False, "Print the table as JSON.", flag="--json")


@dataclass
class PageOutput:
    html_path: str | None = setting(None, "Write the page (plots embedded, nothing fetched).", flag="--html",
                                    metavar="OUT.html")
    md_path: str | None = setting(None, "Write a model card's 'Safety evaluation' section.", flag="--markdown",
                                  metavar="OUT.md")
    json_path: str | None = setting(None, "Write the page's facts (verdict, metrics, safety layers, provenance; "
                                          "schema_version 2); '-' prints them.", flag="--json", metavar="PATH")
    force: bool = setting(False, "Overwrite existing outputs.")


@dataclass
class ShowOptions:
    seed: int = setting(0, "Which reference build.")
    recipe: str = setting(REFERENCE_RECIPES[0], "Which recipe's build.", choices=REFERENCE_RECIPES)
    as_json: bool = setting(False, "Print the manifest as JSON.", flag="--json")


@dataclass
class DoctorOptions:
    as_json: bool = setting(False, "Print the report as JSON (schema_version 2).", flag="--json")
