"""Running untrusted template code (a model's chat template) where it cannot hurt the run.

A chat template is Jinja code shipped inside the model file. Jinja's sandbox blocks attribute tricks, but not
`{{ 'x' * 10**10 }}` (10 GB in one C call: a 24 GB machine was seen killed by it) nor nested loops that never
end, and its errors are not all TemplateErrors (`{{ 1/0 }}` is a ZeroDivisionError). So the renderer runs in
a forked child: it inherits the loaded tokenizer (the same rendering code as in-process, nothing to pickle),
its address space is capped a little above what it inherited, each call has a deadline after which the
child is killed, and its output is capped. Anything that goes wrong is one AuditError naming the model file.
A pipe round trip costs tens of microseconds: negligible beside the forward pass of the prompt it renders.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import signal
from typing import Callable

from ..errors import AuditError

HEADROOM = 1 << 30  # address space the child may grow by: templates render kilobytes
SECONDS = 20.0  # one rendering; real templates take milliseconds (SAFETY_AUDIT_TEMPLATE_SECONDS overrides)
MIN_OUTPUT = 1 << 20


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its parent dies (a parent killed by -9 cannot end it otherwise, and the
    orphan would hold the parent's stdout open, so whoever waits for that output would wait forever)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serve(fn: Callable[[str], str], conn, parent_end, parent_pid: int, headroom: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(0)
    parent_end.close()  # else our own copy of the parent's end would keep the pipe open: no EOF when it dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    vm = _vm_size()
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
    while True:
        try:
            text = conn.recv_bytes().decode("utf-8", errors="surrogatepass")
        except (EOFError, OSError):
            return
        try:
            out = fn(text)
            if not isinstance(out, str):
                raise TypeError(f"rendered to a {type(out).__name__}, not text")
            cap = max(MIN_OUTPUT, 4 * len(text) + 65536)
            if len(out) > cap:
                raise ValueError(f"rendered {len(out):,} characters for a prompt of {len(text):,}")
            reply = b"\x00" + out.encode("utf-8", errors="surrogatepass")
        except BaseException as e:  # noqa: BLE001 (untrusted code: whatever it raises is its failure)
            first = (str(e).strip().splitlines() or [""])[0][:160]
            reply = b"\x01" + f"{type(e).__name__}: {first}".rstrip(": ").encode("utf-8", errors="replace")
        try:
            conn.send_bytes(reply)
        except (OSError, MemoryError):
            return


class BoundedRenderer:
    """`renderer(text)` = fn(text), computed in a capped child process; see the module's docstring."""

    def __init__(self, fn: Callable[[str], str], what: str, path=None, seconds: float | None = None,
                 headroom: int = HEADROOM):
        if seconds is None:
            seconds = float(os.environ.get("SAFETY_AUDIT_TEMPLATE_SECONDS") or SECONDS)
        self.fn, self.what, self.path, self.seconds, self.headroom = fn, what, path, seconds, headroom
        self._proc = self._conn = None

    def _fail(self, detail: str) -> AuditError:
        return AuditError(f"{self.what} cannot be rendered ({detail})", self.path)

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")  # inherit the loaded tokenizer and renderer: nothing pickled
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(self.fn, child, self._conn, os.getpid(), self.headroom), daemon=True)
        self._proc.start()
        child.close()

    def __call__(self, text: str) -> str:
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()
        try:
            self._conn.send_bytes(text.encode("utf-8", errors="surrogatepass"))
            if not self._conn.poll(self.seconds):
                self.close()
                raise self._fail(f"it did not finish within {self.seconds:g} s")
            reply = self._conn.recv_bytes()
        except (EOFError, OSError, BrokenPipeError):
            code = self._proc.exitcode if self._proc else None
            self.close()
            raise self._fail(f"its renderer died{f' (exit {code})' if code is not None else ''}, out of memory "
                             "or killed") from None
        if reply[:1] == b"\x01":
            raise self._fail(reply[1:].decode("utf-8", errors="replace"))
        return reply[1:].decode("utf-8", errors="surrogatepass")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass
