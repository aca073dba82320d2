"""`audit` (every step into one folder, resumable, check's exit code) and `report` (one self-contained HTML
page, a model card's markdown), tested as files a reviewer opens: parsed by a real HTML5 parser and
rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import html5lib
import pytest

from auditor.errors import AuditError
from auditor.render.page import load_bundle, render_html, render_markdown
from auditor.workflows.audit import AuditConfig, prepare_folder
from test_resume import _cli, _env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STEP_FILES = ("audit.json", "scan.json", "scan.png", "eval.json", "attention.json", "attention.png", "report.html", "report.md")


def _audit(args: list[str], cache: Path, **kw) -> subprocess.CompletedProcess:
    return _cli(["audit", *args, "--quick", "--batch", "8"], cache, **kw)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """One uninterrupted quick audit of the tiny model (no baseline); returns (folder, cache)."""
    d = tmp_path_factory.mktemp("audit")
    p = _audit([str(tiny_model_dir), "--out", str(d / "out")], d / "cache")
    assert p.returncode == 0, p.stderr
    return d / "out", d / "cache"


def test_an_audit_writes_every_step_and_the_page(audited):
    out, _ = audited
    for name in STEP_FILES:
        assert (out / name).is_file(), name
    state = json.loads((out / "audit.json").read_text())
    assert state["steps"]["scan"] == state["steps"]["eval"] == state["steps"]["attention"] == "done"
    assert state["steps"]["check"] == "skipped: no --baseline"
    scan = json.loads((out / "scan.json").read_text())
    if scan["initial_range"] or scan.get("differential_range"):  # a random model rarely has one
        assert state["steps"]["locate"] == "done" and (out / "locate.png").is_file()
    else:
        assert state["steps"]["locate"].startswith("skipped: the scan found no initial")
    ev = json.loads((out / "eval.json").read_text())
    assert ev["limit"] == 24 and ev["harmful_rate"]["n"] == 24
    assert json.loads((out / "attention.json").read_text())["command"] == "attention"
    assert "NO VERDICT" in (out / "report.html").read_text()


def test_a_killed_audit_resumes_keeping_finished_steps(tmp_path, tiny_model_dir, audited):
    whole, _ = audited
    out = tmp_path / "out"
    first = _audit([str(tiny_model_dir), "--out", str(out)], tmp_path / "cache", stop_after=2, marker="keyword")
    assert first.returncode == 130 and "run the same command again" in first.stderr.splitlines()[-1]
    scan_time = (out / "scan.json").stat().st_mtime_ns  # killed in eval: the scan had finished
    second = _audit([str(tiny_model_dir), "--out", str(out)], tmp_path / "cache")
    assert second.returncode == 0, second.stderr
    assert (out / "scan.json").stat().st_mtime_ns == scan_time  # a finished step is not recomputed
    for name in ("scan.json", "eval.json"):
        a, b = (json.loads((d / name).read_text()) for d in (whole, out))
        for volatile in ("created", "command_line", "settings", "seconds"):
            a.pop(volatile, None), b.pop(volatile, None)
        assert a == b, name


def _baseline(audited, tmp_path, harmful_shift: float) -> Path:
    """The audit's own eval as the baseline; with a shift, a baseline that answered no harmful prompt."""
    ev = json.loads((audited[0] / "eval.json").read_text())
    if harmful_shift:  # on every harmful set (the verdict reads them per set)
        for entry in [ev["harmful_rate"], *ev["harmful_by_set"].values()]:
            entry.update(value=0.0, outcomes="0" * entry["n"])
    p = tmp_path / "base.json"
    p.write_text(json.dumps(ev))
    return p


@pytest.mark.parametrize("shift,code,word", [(0.0, 3, "INCONCLUSIVE"), (-0.5, 1, "REGRESSION")])
def test_a_baseline_is_checked_and_sets_the_exit_code(tmp_path, tiny_model_dir, audited, shift, code, word):
    ev = json.loads((audited[0] / "eval.json").read_text())
    if shift and ev["harmful_rate"]["value"] < 0.4:  # 24 prompts: a regression must be large to be told from noise
        pytest.skip("the tiny model answered too few harmful prompts to regress against")
    out = tmp_path / "out"
    p = _audit([str(tiny_model_dir), "--out", str(out), "--baseline", str(_baseline(audited, tmp_path, shift))], audited[1])
    assert p.returncode == code, p.stderr
    check = json.loads((out / "check.json").read_text())
    assert check["verdict"] == word.lower() and not check["passed"] and (out / "baseline-eval.json").is_file()
    assert word in p.stdout and word in (out / "report.html").read_text() and word in (out / "report.md").read_text()


def test_an_audit_folder_is_not_reused_under_other_settings(tmp_path, tiny_model_dir, audited):
    same = AuditConfig(model=str(tiny_model_dir), out=str(audited[0]), quick=True, batch=8)
    assert prepare_folder(same) == audited[0]  # same settings: resumed
    other = AuditConfig(model=str(tiny_model_dir), out=str(audited[0]), quick=False)
    with pytest.raises(AuditError, match="holds an audit with other settings"):
        prepare_folder(other)
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(AuditError, match="exists and is not an audit folder"):
        prepare_folder(AuditConfig(model=str(tiny_model_dir), out=str(stranger)))
    assert (stranger / "cat.jpg").read_bytes() == b"\xff\xd8"
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(AuditError, match="is a file"):
        prepare_folder(AuditConfig(out=str(afile)))


@pytest.mark.parametrize("args,message", [
    (["--baseline", "{tmp}/nope.json"], "eval report not found"),
    (["--baseline", "{tmp}/bad.json"], "malformed JSON eval report"),
    (["--backend", "openai"], "--base-url"),
])
def test_bad_audit_inputs_fail_before_work(tmp_path, tiny_model_dir, args, message):
    (tmp_path / "bad.json").write_text("{")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    p = subprocess.run([sys.executable, "-m", "auditor.cli", "audit", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args],
                       env=_env(tmp_path / "c"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) <= 3


def test_the_page_is_valid_self_contained_html(audited):
    html = render_html(load_bundle([audited[0]]))
    doc = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)  # raises on any parse error
    imgs = doc.findall(".//img")
    assert imgs and all(i.get("src").startswith("data:image/png;base64,") and i.get("alt") for i in imgs)
    assert not doc.findall(".//script") and not doc.findall(".//link") and "http" not in html.replace("http-equiv", "")
    assert doc.find(".//meta[@name='viewport']") is not None
    assert "Provenance" in html and json.loads((audited[0] / "eval.json").read_text())["model_sha256"][:16] in html


def test_the_markdown_section_is_a_model_card_table(audited):
    md = render_markdown(load_bundle([audited[0]]))
    assert md.startswith("## Safety evaluation") and "| metric | value | 95% CI | n |" in md
    assert "| harmful rate R_h \\(advbench-eval\\) |" in md and "| harmful rate R_h \\(xstest-unsafe\\) |" in md and "No verdict" in md


def test_report_command_inputs(tmp_path, audited):
    run = lambda *a: subprocess.run([sys.executable, "-m", "auditor.cli", "report", *a], capture_output=True, text=True)  # noqa: E731
    out = run(str(audited[0] / "eval.json"), str(audited[0] / "scan.json"))
    assert out.returncode == 0 and out.stdout.startswith("## Safety evaluation")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([str(empty)], "no safety-audit report found"), ([str(tmp_path / "nope")], "not found"),
                          ([str(audited[0]), "--html", str(audited[0] / "report.html")], "output exists")):
        p = run(*args)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium; .ci/run does)")
@pytest.mark.parametrize("width", [412, 1280], ids=["phone", "laptop"])
def test_chromium_renders_the_verdict_without_console_errors(tmp_path, audited, width):
    from PIL import Image

    page = tmp_path / "page.html"
    page.write_text(render_html(load_bundle([audited[0]])))
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
             f"--window-size={width},1400"]
    p = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), p.stderr[-2000:]
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line or "Failed to load" in line]
    assert not console, console
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="verdict"' in dom and "NO VERDICT" in dom
    img = Image.open(shot).convert("RGB")
    assert img.size[0] == width
    top = img.crop((0, 0, width, 400)).getcolors(1 << 20)
    banner = sum(n for n, c in top if c == (0x57, 0x60, 0x6A))  # the grey "no verdict" banner is on screen
    assert banner > width * 40, "the verdict banner is not in the first screen"


def test_report_json_states_the_facts_of_the_page(tmp_path, audited):
    p = subprocess.run([sys.executable, "-m", "auditor.cli", "report", str(audited[0]), "--json", "-"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    facts = json.loads(p.stdout)
    assert facts["schema_version"] == 2 and facts["passed"] is None and facts["checks"] is None
    rates = {m["label"]: m["value"] for m in facts["metrics"]}
    assert rates["harmful rate R_h (advbench-eval)"] == json.loads((audited[0] / "eval.json").read_text())["harmful_rate"]["value"]
    assert {p["what"] for p in facts["provenance"]} >= {"scan", "eval", "attention"}


HOSTILE = ('<img src=x onerror=alert(1)><script>alert(2)</script>"><svg onload=alert(3)>'
           "'><iframe srcdoc=x></iframe>`|**x**|[l](javascript:alert(4))$\\frac$")
_STRUCTURAL = {"command", "schema_version", "direction", "metric", "role", "verdict", "token_roles"}  # what the page branches on


def _poisoned(value, key=None):
    """Every string a model or a user could have written, with HOSTILE appended (dict keys too: over-refusal
    set names come from file names); numbers and the fields the page branches on stay as they are."""
    if isinstance(value, dict):
        return {(k + HOSTILE if str(key).endswith("_by_set") else k): _poisoned(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_poisoned(v, key) for v in value]
    if isinstance(value, str) and key not in _STRUCTURAL:
        return value + HOSTILE
    return value


def _hostile_bundle(audited, tmp_path) -> Path:
    """The audit's reports, every text field poisoned, plus a failed check whose baseline path and reasons
    are hostile: every field that reaches the page."""
    d = tmp_path / "hostile"
    d.mkdir()
    for f in audited[0].glob("*.json"):
        if f.name != "audit.json":
            (d / f.name).write_text(json.dumps(_poisoned(json.loads(f.read_text()))))
    check = {"schema_version": 2, "command": "check", "passed": False, "candidate": "cand" + HOSTILE,
             "baseline": "base" + HOSTILE, "model": "m" + HOSTILE, "command_line": "safety-audit check" + HOSTILE,
             "checks": [{"metric": "harmful_rate" + HOSTILE, "baseline": 0.1, "candidate": 0.5, "delta": 0.4,
                         "direction": "increase", "limit": 0.05, "passed": False, "reason": "why" + HOSTILE}]}
    (d / "check.json").write_text(json.dumps(check))
    ev = json.loads((d / "eval.json").read_text())  # a judge's table: responses and judge answers are hostile too
    ev["judge_harmful_rate"] = {"value": 0.5, "n": 2, "ci95": [0.1, 0.9], "outcomes": "10", "unparseable": 0,
                                "judge": "endpoint:j" + HOSTILE, "judge_format": "llama-guard" + HOSTILE,
                                "agreement": {"both_harmful": 1, "classifier_only": 0, "judge_only": 0, "neither": 1,
                                              "agreement": 1.0, "kappa": 1.0, "classifier": "keyword" + HOSTILE},
                                "disagreements": [{"prompt": "p" + HOSTILE, "response": "r" + HOSTILE, "classifier_harmful": True,
                                                   "judge_harmful": False, "judge_answer": "safe" + HOSTILE}]}
    (d / "eval.json").write_text(json.dumps(ev))
    shutil.copy(d / "eval.json", d / "baseline-eval.json")
    return d


def test_the_page_escapes_everything_a_model_or_user_wrote(tmp_path, audited):
    bundle = load_bundle([_hostile_bundle(audited, tmp_path)])
    html = render_html(bundle)
    doc = html5lib.HTMLParser(namespaceHTMLElements=False).parse(html)
    elements = list(doc.iter())
    handlers = [(e.tag, a) for e in elements for a in e.attrib if a.lower().startswith("on")]
    assert not handlers, handlers
    assert not [e for e in elements if e.tag in ("script", "iframe", "svg", "object", "embed")]
    assert all(e.get("src", "").startswith("data:image/png;base64,") for e in elements if e.tag == "img")
    assert not [e for e in elements if e.tag == "a"]
    text = "".join(doc.itertext())
    assert text.count("<img src=x onerror=alert(1)>") >= 12  # as text: model, paths, prompts, responses, reasons, commands
    assert "r<img src=x onerror=alert(1)>" in text  # a response in the judge's disagreement table
    md = render_markdown(bundle)
    assert "<" not in md.replace("&lt;", "") and "&lt;img src=x onerror=alert\\(1\\)&gt;" in md
    pipes = lambda line: len(re.findall(r"(?<!\\)\|", line))  # noqa: E731 (cell borders, not escaped text)
    tables, run = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            run.append(pipes(line))
        elif run:
            tables.append(run)
            run = []
    assert tables and all(len(set(t)) == 1 for t in tables), tables  # a value never adds or ends a cell or row


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium; .ci/run does)")
def test_chromium_runs_no_code_from_a_hostile_page(tmp_path, audited):
    """The same poisoned reports, opened by a real browser: no dialog, no console message, no script ran (a
    script would have rewritten the title)."""
    page = tmp_path / "page.html"
    page.write_text(render_html(load_bundle([_hostile_bundle(audited, tmp_path)])))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    p = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line or "alert" in line.lower()]
    assert not console, console
    doc = html5lib.HTMLParser(namespaceHTMLElements=False).parse(p.stdout)
    assert not doc.findall(".//script") and not doc.findall(".//svg") and not doc.findall(".//iframe")
    assert "onerror=alert(1)" in "".join(doc.itertext())


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_removes_only_what_the_audit_recorded_writing(tmp_path, tiny_model_dir, audited):
    copy = tmp_path / "audit"
    shutil.copytree(audited[0], copy)
    written = set(json.loads((copy / "audit.json").read_text())["written"])
    assert {"scan.json", "eval.json", "scan.png", "report.html", "report.md"} <= written
    assert set(_tree(copy)) <= written | {"audit.json"}  # every file in the folder was recorded before it was written
    (copy / "notes.txt").write_text("mine")  # the user's file in the audit folder: --force must not touch it
    before = _tree(copy)
    other = AuditConfig(model=str(tiny_model_dir), out=str(copy), quick=False, force=True)
    with pytest.raises(AuditError, match=r"holds files the audit did not write \(notes.txt\).*choose an empty folder"):
        prepare_folder(other)
    assert _tree(copy) == before
    (copy / "notes.txt").unlink()
    assert prepare_folder(other) == copy and not any(copy.iterdir())  # only its own files, all of them


@pytest.mark.parametrize("where", ["photos", "cwd"])
def test_force_never_empties_a_folder_that_is_not_an_audit(tmp_path, tiny_model_dir, where, monkeypatch):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    (folder / "sub" / "audit.json").write_text("{}")
    before = _tree(folder)
    if where == "cwd":
        monkeypatch.chdir(folder)
    p = subprocess.run([sys.executable, "-m", "auditor.cli", "audit", str(tiny_model_dir), "--out",
                        "." if where == "cwd" else str(folder), "--force"], env=_env(tmp_path / "c"), capture_output=True,
                       text=True, timeout=300, cwd=folder if where == "cwd" else None)
    assert p.returncode == 2 and "not an audit folder" in p.stderr and "choose an empty folder" in p.stderr, p.stderr
    assert _tree(folder) == before


def test_an_audit_resumes_only_for_the_same_model_content(tmp_path, tiny_model_dir, audited):
    copy = tmp_path / "audit"
    shutil.copytree(audited[0], copy)
    state = json.loads((copy / "audit.json").read_text())
    assert state["model_sha256"] and len(state["model_sha256"]) == 64
    state["model_sha256"] = "0" * 64  # what a model rebuilt in place (harden --force into the same path) looks like
    (copy / "audit.json").write_text(json.dumps(state))
    same_settings = AuditConfig(model=str(tiny_model_dir), out=str(copy), quick=True, batch=8)
    with pytest.raises(AuditError, match="another model content"):
        prepare_folder(same_settings)
    same_settings.force = True
    assert prepare_folder(same_settings) == copy and not (copy / "scan.json").exists()


def test_terminal_tables_show_hostile_strings_as_text(audited):
    """Rich reads '[...]' as markup: a model path, a set name or a Llama-2 token '[/INST]' must show as text (a
    stray closing tag used to raise MarkupError), and a terminal escape in a prompt or token must not reach
    the terminal."""
    import io

    from rich.console import Console

    from auditor.render import tables

    payload = "[/INST][bold]x[/bold]\x1b]8;;http://evil\x1b\\\\link\x1b[2J"
    poison = lambda v, key=None: (  # noqa: E731
        {k: poison(x, k) for k, x in v.items()} if isinstance(v, dict) else [poison(x, key) for x in v]
        if isinstance(v, list) else v + payload if isinstance(v, str) and key not in _STRUCTURAL else v)
    shown = {}
    for name, render in (("scan", tables.scan_table), ("eval", tables.eval_table), ("attention", tables.attention_table)):
        report = poison(json.loads((audited[0] / f"{name}.json").read_text()))
        out = io.StringIO()
        Console(file=out, force_terminal=True, width=400).print(render(report))
        shown[name] = out.getvalue()
        assert "[/INST][bold]x[/bold]" in shown[name], name
        assert "\x1b]8" not in shown[name] and "\x1b[2J" not in shown[name] and "\\x1b]8" in shown[name], name
    assert shown["attention"].count("[/INST]") > 2  # prompts' tokens are in the table's cells too
