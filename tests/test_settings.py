"""One settings scheme for every command: command line > SAFETY_AUDIT_<OPTION> > --config FILE > default, the
effective value and source of each setting in every report header, and one-line errors for a bad file."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from auditor.cli import main, settings


class _Stop(Exception):
    pass


def _sample(option: click.Option):
    """A value this option accepts from a file or the environment (None: skip it in the generic test)."""
    if option.callback is not None or option.multiple or option.nargs != 1:
        return None
    t = option.type
    if isinstance(t, click.Choice):
        return t.choices[-1]
    if option.is_flag:
        return True
    return {click.INT: 3, click.FLOAT: 0.5, click.STRING: "x"}.get(t)


LEAVES = {" ".join(path): cmd for path, cmd in settings._leaves(main).items()}


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_command_takes_file_environment_and_command_line_in_that_order(name, tmp_path, monkeypatch):
    command = LEAVES[name]
    table = name.replace(" ", ".")
    usable = [(k, p, v) for k, p in settings._settings_of(command).items()
              if not p.required and k not in ("out", "baseline") and (v := _sample(p)) is not None]
    assert usable, f"{name} has no plain option to set"
    (k1, _, v1), (k2, _, v2) = usable[0], usable[-1]  # one option alone is set from the file and the environment
    cfg = tmp_path / "s.toml"
    lines = [f"{k1} = {json.dumps(v1)}"] + ([f"{k2.replace('_', '-')} = {json.dumps(v2)}"] if k2 != k1 else [])
    cfg.write_text(f"[{table}]\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv(settings.ENV_PREFIX + k2.upper(), str(v2).lower() if isinstance(v2, bool) else str(v2))
    seen = {}

    def capture(record):
        seen.update(record)
        raise _Stop

    monkeypatch.setattr(settings, "set_settings", capture)
    args = name.split() + (["x.json"] if name in ("check",) else []) + (["--baseline", "b.json"] if name == "check" else [])
    args += (["--out", str(tmp_path / "o")] if any(o.name == "out" and o.required for o in command.params) else [])
    args += (["reports"] if name == "report" else []) + (["a.json", "b.json"] if name == "compare" else [])
    CliRunner().invoke(main, [*args, "--config", str(cfg)], catch_exceptions=True)
    assert seen, f"{name}: the settings were not recorded"
    assert seen[k2]["source"] == "environment", (name, seen[k2])
    assert k1 == k2 or seen[k1]["source"] == "file", (name, seen[k1])
    assert all(s["source"] in ("default", "command line", "file", "environment") for s in seen.values())


def test_precedence_and_the_header_of_a_real_report(tiny_model_dir, tmp_path, monkeypatch):
    cfg = tmp_path / "safety-audit.toml"
    cfg.write_text('threads = 1\nmax-new-tokens = 9\n[eval]\nlimit = 3\nmetrics = ["harmful"]\nbootstrap = 7\n')
    monkeypatch.setenv("SAFETY_AUDIT_LIMIT", "2")  # the environment beats the file
    out = tmp_path / "e.json"
    r = CliRunner().invoke(main, ["eval", str(tiny_model_dir), "--config", str(cfg), "--max-new-tokens", "2",
                                  "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    s = rep["settings"]
    assert rep["limit"] == 2 and s["limit"] == {"value": 2, "source": "environment"}
    assert rep["max_new_tokens"] == 2 and s["max_new_tokens"]["source"] == "command line"  # the command line beats all
    assert s["metrics"] == {"value": ["harmful"], "source": "file"} and list(rep) .count("harmful_rate") == 1
    assert s["bootstrap"]["source"] == "file" and s["threads"] == {"value": 1, "source": "file"}  # shared key
    assert s["template"]["source"] == "default" and "force" not in s and "config" not in s


@pytest.mark.parametrize("text,message", [
    ("treads = 2\n", "unknown setting 'treads'"),
    ("[eval]\ncontrast = 'm'\n", "unknown setting 'contrast' for 'eval'"),
    ("[eval\n", "malformed config file"),
    ("limit = " + "[" * 3000 + "]" * 3000 + "\n", "malformed config file"),
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = CliRunner().invoke(main, ["eval", "--config", str(cfg)])
    assert r.exit_code == 2 and message in r.stderr and "bad.toml" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_force_is_never_read_from_a_file_or_the_environment(tmp_path, monkeypatch):
    old = tmp_path / "old.json"
    old.write_text("{}")
    cfg = tmp_path / "s.toml"
    cfg.write_text("force = true\n")
    r = CliRunner().invoke(main, ["scan", "--json", str(old), "--config", str(cfg)])
    assert r.exit_code == 2 and "unknown setting 'force'" in r.stderr
    monkeypatch.setenv("SAFETY_AUDIT_FORCE", "1")
    r = CliRunner().invoke(main, ["scan", "--json", str(old)])
    assert r.exit_code == 2 and "--force" in r.stderr and old.read_text() == "{}"
