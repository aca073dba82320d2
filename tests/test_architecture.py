"""The floors hold (import-linter contracts in pyproject.toml) and no module imports itself back through
others: the cycles of v0.1 (models -> reference -> harden -> models, ...) cannot come back unnoticed."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 kept, 0 broken" in p.stdout


def _cycle(graph) -> list[str] | None:
    """A module-level import cycle (a package importing its own submodules is not one), or None."""
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if not i.startswith(m + ".")} for m in graph.modules}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph.modules):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles_anywhere():
    graph = grimp.build_graph("auditor")  # imports inside functions count too
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = grimp.build_graph("auditor")
    graph.add_import(importer="auditor.io.cache", imported="auditor.workflows.scan")
    assert _cycle(graph) is not None


@pytest.mark.parametrize("path", sorted((ROOT / "auditor").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    """No module over ~400 lines, no function over ~60 (the guide's sizes, with a little slack)."""
    text = path.read_text()
    assert len(text.splitlines()) <= 420, f"{path.name}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 65 or node.name == "lisa_trainer_class", f"{path.name}:{node.name} is {length} lines"


def test_every_metric_registry_entry_is_complete():
    """A metric is one entry of evaluate.METRICS: its computation, what it needs, and every number it reports
    and gates (key, label, check option, direction, margin, kind). gate, render and compare read them there."""
    from click.testing import CliRunner

    from auditor.backends.base import CAPABILITIES
    from auditor.cli import main
    from auditor.workflows import gate
    from auditor.workflows.evaluate import GATES, METRICS

    assert METRICS and GATES
    for name, m in METRICS.items():
        assert m.help and callable(m.compute) and set(m.needs) <= set(CAPABILITIES) and m.gates, name
        for g in m.gates:
            assert g.key.isidentifier() and g.label and g.option.startswith("max_") and g.margin > 0, g
            assert g.direction in ("increase", "drop") and g.kind in ("rate", "mean"), g
    keys = [g.key for m in METRICS.values() for g in m.gates]
    assert len(set(keys)) == len(keys) and len({g.label for g in GATES.values()}) == len(keys)
    assert len({g.option for g in GATES.values()}) == len(keys)
    assert gate.THRESHOLDS == {k: (g.option, g.direction, g.margin) for k, g in GATES.items()}
    assert gate.LABELS == {k: g.label for k, g in GATES.items()}
    check_help = CliRunner().invoke(main, ["check", "--help"]).output
    assert all(f"--{g.option.replace('_', '-')}" in check_help for g in GATES.values())


def test_every_api_name_the_docs_cite_exists():
    """`auditor.x.y.name` in README.md or docs/*.md: each one imports (the README once cited modules that did not)."""
    import importlib
    import re

    root = Path(__file__).resolve().parents[1]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    names = sorted({m for t in texts for m in re.findall(r"`(auditor(?:\.[A-Za-z_]\w*)+)", t.read_text())})
    assert names, "the docs cite no API name: this test would check nothing"
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            obj = importlib.import_module(name)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, f"{name} is cited in the docs and does not exist"


def test_every_relative_link_in_the_docs_resolves():
    """README.md and docs/**/*.md link to each other by relative paths: each target exists (anchors aside)."""
    import re

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    links = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http:, mailto:, javascript: in examples
            links += 1
            assert (page.parent / target).exists(), f"{page.relative_to(root)} links to {target}, which does not exist"
    assert links >= 15


def test_the_readme_is_for_users():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "bash scripts/setup.sh && .venv/bin/safety-audit scan\n" in text
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q\n" in text


def test_a_backends_capabilities_are_stated_once():
    """In its registry entry, nowhere else: no Backend class declares its own (they used to, beside the entry)."""
    from auditor.backends import REGISTRY

    for name, spec in REGISTRY.items():
        cls = spec.load_class()
        assert cls.name == name and "capabilities" not in vars(cls), name


def _every_option():
    from auditor.cli import main
    from auditor.cli.settings import _leaves

    for path, command in _leaves(main).items():
        for p in command.params:
            if isinstance(p, __import__("click").Option):
                yield " ".join(path), p


def test_every_click_option_is_a_config_field():
    """Options are generated from config dataclass fields (cli/common.options): each one names its dataclass and
    field, its flag and default come from that field, and setting it reaches the field. Only --config (the settings
    file itself), --help and --version are not settings."""
    import dataclasses

    from auditor.cli.common import FieldOption
    from auditor.io.config import default_of

    seen = 0
    for command, p in _every_option():
        if p.name in ("config", "help", "version") or p.hidden:
            continue
        assert isinstance(p, FieldOption), f"{command} {p.opts[0]} is written by hand, not generated from a config field"
        names = {f.name for f in dataclasses.fields(p.config)}
        assert p.field in names and p.name.removeprefix(p.prefix).removeprefix("not__") == p.field, (command, p.opts, p.field)
        default = default_of(p.config, p.field)
        if not p.is_flag and not p.required and not isinstance(default, tuple):
            assert p.default == default, (command, p.opts, p.default, default)
        seen += 1
    assert seen > 100


def test_a_planted_hand_written_option_is_caught():
    import click

    from auditor.cli import main

    extra = click.Option(["--by-hand"], is_flag=True)
    main.commands["scan"].params.append(extra)
    try:
        with pytest.raises(AssertionError, match="by hand"):
            test_every_click_option_is_a_config_field()
    finally:
        main.commands["scan"].params.remove(extra)


def test_no_module_outside_cli_defines_a_click_option():
    """click lives on the top floor: a workflow, a renderer or a backend that defined an option (or imported
    click at all) would be a second place where settings are written."""
    offenders = []
    for path in sorted((ROOT / "auditor").rglob("*.py")):
        if path.is_relative_to(ROOT / "auditor" / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "click" or n.startswith("click.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_every_config_field_is_a_setting_with_help():
    """Every field of a config the CLI reads carries its help (and is marked cli=False when it is not an option)."""
    import dataclasses

    seen = set()
    for _, p in _every_option():
        if hasattr(p, "config") and p.config not in seen:
            seen.add(p.config)
            for f in dataclasses.fields(p.config):
                if "help" in f.metadata:
                    assert f.metadata["help"], (p.config.__name__, f.name)
    assert len(seen) >= 12


def test_every_classifier_entry_makes_a_classifier():
    """The classifier registry is the one place a classifier's name, old names and construction live; what each
    makes has every member of the Classifier protocol, and names itself as registered."""
    from auditor.core.refusal import CLASSIFIERS, RENAMED, Classifier, canonical_classifier, make_classifier

    members = [m for m in vars(Classifier) if not m.startswith("_")] + list(Classifier.__annotations__)
    for name, entry in CLASSIFIERS.items():
        made = entry.make(16)
        assert made.name == name and make_classifier(name).name == name and entry.help
        assert all(hasattr(made, m) for m in members), (name, [m for m in members if not hasattr(made, m)])
        assert isinstance(made.describe()["sha256"], str)
        for old in entry.old_names:
            assert RENAMED[old] == name and canonical_classifier(old, note=lambda m: None) == name


def test_the_report_schema_page_is_what_the_code_writes():
    """docs/reports.md's tables are generated from the report dataclasses: regenerate them after changing a report."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import report_schemas

    page = (ROOT / "docs" / "reports.md").read_text()
    assert report_schemas.section() in page, "docs/reports.md is stale: run python scripts/report_schemas.py"
    assert "`initial_range`" in page and "`harmful_rate`" in page


def test_the_cost_page_is_generated_from_the_committed_measurements():
    """docs/costs.md's tables come from benchmarks/results/bench_scale.json (python benchmarks/cost_model.py)."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cost_model

    text = cost_model.section(json.loads(cost_model.RESULT.read_text()))
    assert text in (ROOT / "docs" / "costs.md").read_text(), "docs/costs.md is stale: run python benchmarks/cost_model.py"
    assert "llama-3.2-1b (1.07B)" in text and "8B (Llama-3.1-8B)" in text
