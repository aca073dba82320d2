"""The bounded renderer that runs a model's chat template: same text as in-process, every failure one
AuditError, memory and time capped, and a child that never outlives its parent."""

from __future__ import annotations

import select
import subprocess
import sys
import time

import pytest

from auditor.errors import AuditError
from auditor.io.bounded import BoundedRenderer


def _endless(text: str) -> str:
    while True:
        pass


def _hog(text: str) -> str:
    return "x" * (10 ** 10)


@pytest.mark.parametrize("fn,message", [
    (lambda t: 1 / 0, "ZeroDivisionError: division by zero"),
    (_hog, "MemoryError"),
    (lambda t: t * 2_000_000, "rendered 2,000,000 characters for a prompt of 1"),
    (lambda t: 42, "rendered to a int, not text"),
    (_endless, "did not finish within 1 s"),
])
def test_every_failure_is_one_line_naming_the_model(tmp_path, fn, message):
    r = BoundedRenderer(fn, "the model's chat template", tmp_path / "model.gguf", seconds=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(AuditError, match=message) as e:
            r("a")
        assert time.monotonic() - t0 < 15
        assert str(e.value).startswith("the model's chat template cannot be rendered (") and "\n" not in str(e.value)
        assert str(tmp_path / "model.gguf") in str(e.value)
    finally:
        r.close()


def test_it_renders_what_the_function_renders_and_survives_failures():
    calls = {"n": 0}

    def render(text):
        calls["n"] += 1  # counted in the child: the parent's count never moves
        if text == "boom":
            raise ValueError("no")
        return f"<user>{text}</user>\u2019"

    r = BoundedRenderer(render, "t")
    try:
        assert r("hi") == "<user>hi</user>\u2019" and r("\ud800 lone surrogate".encode("utf-8", "surrogatepass").decode(
            "utf-8", "surrogatepass")).startswith("<user>")
        with pytest.raises(AuditError, match="ValueError: no"):
            r("boom")
        assert r("again") == "<user>again</user>\u2019"  # the same child goes on after an exception
        assert calls["n"] == 0
    finally:
        r.close()


def test_the_child_dies_with_its_parent():
    """A parent killed with -9 (test_resume does it) must not leave its renderer behind holding stdout open:
    whoever reads that output would wait forever."""
    code = ("from auditor.io.bounded import BoundedRenderer\nimport time\n"
            "r = BoundedRenderer(lambda s: s.upper(), 'x')\nprint(r('ok'), flush=True)\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "OK"
        p.kill()
        p.wait(timeout=10)
        ready, _, _ = select.select([p.stdout], [], [], 10)
        assert ready and p.stdout.read() == ""  # EOF: no orphan holds the pipe
    finally:
        p.kill()
