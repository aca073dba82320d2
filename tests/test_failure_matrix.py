"""The product attacked as a whole: one table of bad inputs and hostile environments across every command.

Each case asserts what a user needs when something is wrong: exit code 2 (1 only for a check regression),
one line on stderr naming the problem and the path, no traceback, every input file byte-identical
afterwards, and no partial output (nor temp file) left behind.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import pickle
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import main
from conftest import write_lines
from test_gguf_file import ARCH, LAYERS, F32_4x4, _kv, _nested, raw_gguf


@dataclass
class Env:
    """Inputs live in `inp` (checked byte-identical after every case); outputs go to `out`."""

    inp: Path
    out: Path
    tiny: Path
    gguf: Path
    eval_json: Path
    refused_url: str
    hung_url: str
    garbage_url: str
    redirect_url: str
    unauthorized_url: str
    flood_url: str

    def file(self, name: str, data: bytes | str) -> Path:
        p = self.inp / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p


class _Evil:
    """Unpickling this would create a file: a loader that unpickles is caught red-handed."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _gguf_with(path: Path, arch: str = "llama", block_count: int = 1, tensor_shape=(4, 4), template: str | None = None,
               fake_elements: int | None = None) -> Path:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(block_count)
    if template is not None:
        w.add_chat_template(template)
    w.add_tensor("blk.0.attn_q.weight", np.ones(tensor_shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if fake_elements:  # rewrite the tensor's first dimension in place: metadata that claims a vast tensor
        data = bytearray(path.read_bytes())
        at = data.find(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight")
        n_dims = int.from_bytes(data[at:at + 4], "little")
        assert n_dims == 2
        data[at + 4:at + 12] = fake_elements.to_bytes(8, "little")
        path.write_bytes(bytes(data))
    return path


def _folder(env: Env, name: str, drop=(), config: str | None = None, extra: dict | None = None) -> Path:
    d = env.inp / name
    shutil.copytree(env.tiny, d)
    for pattern in drop:
        for f in d.glob(pattern):
            f.unlink()
    if config is not None:
        (d / "config.json").write_text(config)
    for fname, data in (extra or {}).items():
        (d / fname).write_bytes(data)
    return d


ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _escaping_template(env: Env, template: str = ESCAPE, name: str = "escape") -> Path:
    """A chat template that tries to reach Python's object graph from Jinja (a sandbox escape), or another
    hostile one: an exception that is no TemplateError, 10 GB in one expression, a loop that never ends."""
    d = _folder(env, name)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in d.glob("chat_template.*"):
        f.write_text(template)
    return d


HOSTILE_TEMPLATES = {  # what a model file's chat template can do inside Jinja's sandbox
    "division by zero": "{{ 1/0 }}",
    "10 GB string": "{{ 'x' * 10**10 }}",
    "endless loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "output flood": "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "syntax error": "{% if %}",
    "undefined call": "{{ nothing() }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


def _pickled_folder(env: Env) -> Path:
    evil = _Evil()
    _Evil.marker = env.out.parent / "UNPICKLED"
    return _folder(env, "pickled", drop=("*.safetensors",), extra={"pytorch_model.bin": pickle.dumps(evil)})


def _readonly(env: Env) -> Path:
    """A folder nobody may write into: mode 555 for a user; for root (whom modes do not stop) /sys, a
    pseudo-filesystem that refuses new files even to root."""
    if os.geteuid() == 0:
        return Path("/sys")
    d = env.out / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def _newer_eval(env: Env) -> Path:
    data = json.loads(env.eval_json.read_text())
    data["schema_version"] = 99
    return env.file("newer.json", json.dumps(data))


def _cut_gguf(env: Env) -> Path:
    size = env.gguf.stat().st_size
    with open(env.gguf, "rb") as f:
        return env.file("cut_last.gguf", f.read(size - 1000))


M = "{model}"  # the tiny HF model folder
RO = "/sys" if os.geteuid() == 0 else "ro"  # how the read-only folder shows in messages
CASES = [
    # -- model files ------------------------------------------------------------------------------------
    ("scan zero-byte gguf", lambda e: ["scan", str(e.file("empty.gguf", b""))], "empty.gguf", "GGUF"),
    ("scan truncated header", lambda e: ["scan", str(e.file("t.gguf", b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (3).to_bytes(8, "little") + (40).to_bytes(8, "little") + b"general.arch"))], "t.gguf", "truncated"),
    ("scan random bytes", lambda e: ["scan", str(e.file("r.gguf", np.random.default_rng(0).bytes(4096)))], "r.gguf", "magic"),
    ("scan wrong magic", lambda e: ["scan", str(e.file("w.gguf", b"GGML" + bytes(200)))], "w.gguf", "magic"),
    ("scan unknown architecture", lambda e: ["scan", str(_gguf_with(e.inp / "alien.gguf", "alienformer"))], "alien.gguf", "alienformer"),
    ("scan tensor data cut", lambda e: ["scan", str(_cut_gguf(e))], "cut_last.gguf", "truncated"),
    ("scan absurd layer count", lambda e: ["scan", str(_gguf_with(e.inp / "deep.gguf", block_count=10**9))], "deep.gguf", "layers"),
    ("scan absurd tensor size", lambda e: ["scan", str(_gguf_with(e.inp / "vast.gguf", fake_elements=2**40))], "vast.gguf", "truncated"),
    ("scan pickle-only folder", lambda e: ["scan", str(_pickled_folder(e)), "--backend", "torch"], "pickled", "safetensors"),
    ("scan malformed config.json", lambda e: ["scan", str(_folder(e, "badcfg", config="{not json"))], "badcfg", "config.json"),
    ("scan tokenizer missing", lambda e: ["scan", str(_folder(e, "notok", drop=("tokenizer*", "special_tokens_map.json")))], "notok", "tokenizer"),
    ("scan chat template escaping the sandbox", lambda e: ["scan", str(_escaping_template(e)), "--template", "chat"], "escape", "chat template"),
    *[(f"scan chat template {what}", lambda e, t=t: ["scan", str(_escaping_template(e, t, "hostile")), "--template", "chat"],
       "hostile", "chat template") for what, t in HOSTILE_TEMPLATES.items()],
    ("scan missing model", lambda e: ["scan", str(e.inp / "nowhere.gguf")], "nowhere.gguf", "not found"),
    ("locate zero-byte gguf", lambda e: ["locate", str(e.file("z.gguf", b"")), "--start", "1-2"], "z.gguf", "GGUF"),
    ("eval wrong magic", lambda e: ["eval", str(e.file("m.gguf", b"NOPE" + bytes(100)))], "m.gguf", "magic"),
    ("harden negative rows", lambda e: ["harden", M, "--out", str(e.out / "h"), "--layers", "1-2", "--rows", "-5"], "", "--rows"),
    # -- prompt and data files ----------------------------------------------------------------------------
    ("scan empty prompt file", lambda e: ["scan", M, "--normal", str(e.file("empty.txt", ""))], "empty.txt", "no prompts"),
    ("scan one-line prompt file", lambda e: ["scan", M, "--normal", str(e.file("one.txt", "just one\n"))], "one.txt", "at least 2"),
    ("scan non-UTF-8 prompts", lambda e: ["scan", M, "--normal", str(e.file("latin.txt", "caf\xe9\nna\xefve\n".encode("latin-1")))], "latin.txt", "UTF-8"),
    ("scan 10 MB on one line", lambda e: ["scan", M, "--normal", str(e.file("huge.txt", "a" * 10_000_000 + "\nshort one\n"))], "huge.txt", "long"),
    ("scan CSV without a usable column", lambda e: ["scan", M, "--normal", str(e.file("p.csv", "id,score\n1,2\n3,4\n"))], "p.csv", "column"),
    ("scan JSONL with a bad line", lambda e: ["scan", M, "--normal", str(e.file("p.jsonl", '{"prompt": "a"}\n{"prompt": \n{"prompt": "c"}\n'))], "p.jsonl", "line 2"),
    ("locate empty D_o", lambda e: ["locate", M, "--start", "1-2", "--over-refusal", str(e.file("do.txt", "\n\n"))], "do.txt", "no prompts"),
    ("harden data with a bad line", lambda e: ["harden", M, "--out", str(e.out / "h"), "--layers", "1-2", "--data",
                                                str(e.file("d.jsonl", '{"instruction": "a", "output": "b"}\nnope\n'))], "d.jsonl", "line 2"),
    ("harden data without outputs", lambda e: ["harden", M, "--out", str(e.out / "h"), "--layers", "1-2", "--data",
                                                str(e.file("d.csv", "instruction\nhello\n"))], "d.csv", "output"),
    ("eval task file missing", lambda e: ["eval", M, "--metrics", "rouge", "--task", str(e.inp / "nope.json")], "nope.json", "not found"),
    ("eval responses file broken", lambda e: ["eval", M, "--responses", str(e.file("r.jsonl", "{\n"))], "r.jsonl", "line 1"),
    # -- numbers and ranges ---------------------------------------------------------------------------------
    ("locate layers out of range", lambda e: ["locate", M, "--start", "50-60"], "", "layers"),
    ("locate reversed range", lambda e: ["locate", M, "--start", "7-3"], "", "7-3"),
    ("locate alpha zero", lambda e: ["locate", M, "--start", "1-2", "--alpha", "0"], "", "alpha"),
    ("locate alpha negative", lambda e: ["locate", M, "--start", "1-2", "--alpha", "-1.5"], "", "alpha"),
    ("locate alpha one", lambda e: ["locate", M, "--start", "1-2", "--alpha", "1"], "", "alpha"),
    ("harden layers out of range", lambda e: ["harden", M, "--out", str(e.out / "h"), "--layers", "3-9"], "", "layers"),
    ("harden negative p", lambda e: ["harden", M, "--out", str(e.out / "h"), "--layers", "1-2", "--attack", "harmful", "--p", "-0.1"], "", "--p"),
    ("eval negative bootstrap", lambda e: ["eval", M, "--bootstrap", "-1"], "", "--bootstrap"),
    ("scan negative pairs", lambda e: ["scan", M, "--pairs", "0"], "", "--pairs"),
    ("scan cuda without a GPU", lambda e: ["scan", M, "--device", "cuda"], "", "CUDA"),
    ("reference bad rows", lambda e: ["reference", "build", "--out", str(e.out / "ref"), "--benign-rows", "-3"], "", "rows"),
    # -- outputs ------------------------------------------------------------------------------------------------
    ("harden --out is a file", lambda e: ["harden", M, "--out", str(e.file("taken", "x")), "--layers", "1-2"], "taken", "is a file"),
    ("harden --out in a read-only folder", lambda e: ["harden", M, "--out", str(_readonly(e) / "h"), "--layers", "1-2",
                                                      "--max-steps", "1", "--rows", "4"], RO, "not writable"),
    ("scan --json into a missing folder", lambda e: ["scan", M, "--json", str(e.out / "no" / "such" / "s.json")], "no/such", "folder"),
    ("scan --json in a read-only folder", lambda e: ["scan", M, "--json", str(_readonly(e) / "s.json")], RO, "not writable"),
    ("scan --json existing without --force", lambda e: ["scan", M, "--json", str(e.file("old.json", "{}"))], "old.json", "--force"),
    ("scan --json on a full disk", lambda e: ["scan", M, "--json", str(e.out / "full" / "s.json"), "--bootstrap", "0"], "s.json", "space"),
    ("eval --json in a read-only folder", lambda e: ["eval", M, "--json", str(_readonly(e) / "e.json")], RO, "not writable"),
    # -- judges and servers -------------------------------------------------------------------------------------------
    ("eval judge refuses connections", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.refused_url, "--judge-timeout", "1", "--limit", "1",
                                                  "--max-new-tokens", "2"], "127.0.0.1", "judge"),
    ("eval judge hangs", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.hung_url, "--judge-timeout", "1", "--limit", "1",
                                    "--max-new-tokens", "2"], "127.0.0.1", "judge"),
    ("eval judge returns garbage", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.garbage_url, "--judge-timeout", "1", "--limit", "1",
                                              "--max-new-tokens", "2"], "127.0.0.1", "judge"),
    ("eval openai server down", lambda e: ["eval", "--backend", "openai", "--base-url", e.refused_url, "--model", "m",
                                           "--metrics", "harmful", "--limit", "1"], "127.0.0.1", "server"),
    # -- reports and policies --------------------------------------------------------------------------------------------
    ("check newer schema", lambda e: ["check", str(_newer_eval(e)), "--baseline", str(e.eval_json)], "newer.json", "schema"),
    ("check policy with unknown keys", lambda e: ["check", str(e.eval_json), "--baseline", str(e.eval_json), "--policy",
                                                  str(e.file("p.toml", "[thresholds]\nmax_harmfull_increase = 0.1\n"))], "p.toml", "max_harmfull_increase"),
    ("check policy not TOML", lambda e: ["check", str(e.eval_json), "--baseline", str(e.eval_json), "--policy",
                                         str(e.file("p2.toml", "[thresholds\n"))], "p2.toml", "TOML"),
    ("check baseline not JSON", lambda e: ["check", str(e.eval_json), "--baseline", str(e.file("b.json", "nope"))], "b.json", "JSON"),
    ("check baseline is a scan report", lambda e: ["check", str(e.eval_json), "--baseline",
                                                   str(e.file("s.json", json.dumps({"schema_version": 2, "command": "scan"})))], "s.json", "eval"),
    ("compare a missing report", lambda e: ["compare", str(e.eval_json), str(e.inp / "gone.json")], "gone.json", "not found"),
    ("compare a non-report", lambda e: ["compare", str(e.eval_json), str(e.file("list.json", "[1, 2]"))], "list.json", "report"),
    ("locate from a broken scan report", lambda e: ["locate", M, "--from-scan", str(e.file("scan.json", "{"))], "scan.json", "JSON"),
    ("harden from a report without a range", lambda e: ["harden", M, "--out", str(e.out / "h"), "--from-report",
                                                        str(e.file("loc.json", json.dumps({"schema_version": 2, "command": "locate"})))], "loc.json", "range"),
    ("attention on the llama backend", lambda e: ["attention", M, "--backend", "llama", "--plot", str(e.out / "a.png")], "", "--backend torch"),
    ("attention unknown --heads", lambda e: ["attention", M, "--heads", "all", "--plot", str(e.out / "a.png")], "", "--heads"),
    ("attention --scale without --alpha", lambda e: ["attention", M, "--scale", "1-2", "--plot", str(e.out / "a.png")], "", "--alpha"),
    ("attention from a broken report", lambda e: ["attention", M, "--from-report", str(e.file("loc.json", "{")), "--plot",
                                                  str(e.out / "a.png")], "loc.json", "report"),
    ("audit --out is a file", lambda e: ["audit", M, "--out", str(e.file("taken", "x"))], "taken", "is a file"),
    ("audit into a folder of other files", lambda e: ["audit", M, "--out", str(_folder_with(e, "photos", "cat.jpg"))], "photos",
     "not an audit folder"),
    ("audit baseline not JSON", lambda e: ["audit", M, "--out", str(e.out / "a"), "--baseline", str(e.file("b.json", "nope"))], "b.json", "JSON"),
    ("report of a folder without reports", lambda e: ["report", str(_folder_with(e, "empty", "notes.txt"))], "empty", "no safety-audit report"),
    # -- round 2: hostile files, servers and folders -----------------------------------------------------------------
    ("scan gguf alignment zero", lambda e: ["scan", str(raw_gguf(e.inp / "a0.gguf", [ARCH, LAYERS, _kv("general.alignment", 4, bytes(4))]))],
     "a0.gguf", "alignment"),
    ("scan gguf alignment a string", lambda e: ["scan", str(raw_gguf(e.inp / "as.gguf", [ARCH, LAYERS, _kv("general.alignment", 8, b"\x02" + bytes(7) + b"32")]))],
     "as.gguf", "alignment"),
    ("scan gguf block_count a string", lambda e: ["scan", str(raw_gguf(e.inp / "bc.gguf", [ARCH, _kv("llama.block_count", 8, b"\x03" + bytes(7) + b"abc")]))],
     "bc.gguf", "block_count"),
    ("scan gguf string of 2^60 bytes", lambda e: ["scan", str(raw_gguf(e.inp / "s60.gguf", [ARCH, LAYERS, _kv("x.s", 8, (1 << 60).to_bytes(8, "little"))]))],
     "s60.gguf", "past the end"),
    ("scan gguf arrays nested 1000 deep", lambda e: ["scan", str(raw_gguf(e.inp / "deepa.gguf", [ARCH, LAYERS, _kv("x.n", 9, _nested(1000))]))],
     "deepa.gguf", "nested"),
    ("scan gguf duplicate tensors", lambda e: ["scan", str(raw_gguf(e.inp / "dup.gguf", tensors=[F32_4x4, F32_4x4[:3] + (64,)]))], "dup.gguf", "twice"),
    ("scan gguf overlapping tensors", lambda e: ["scan", str(raw_gguf(e.inp / "ovl.gguf", tensors=[F32_4x4, ("blk.0.attn_k.weight", (4, 4), 0, 32)], data=256))],
     "ovl.gguf", "overlap"),
    ("locate alpha overflowing the fp16 scales", lambda e: ["locate", str(e.gguf), "--start", "1-2", "--alpha", "1e6", "--limit", "1",
                                                           "--classifier", "opening", "--json", str(e.out / "l.json")], "Q4_1.gguf", "overflows"),
    ("eval --json and --save-responses on one file", lambda e: ["eval", M, "--json", str(e.out / "x.json"), "--save-responses",
                                                                str(e.out / "x.json")], "x.json", "same file"),
    ("locate --json and --plot on one file", lambda e: ["locate", M, "--start", "1-2", "--json", str(e.out / "x"), "--plot",
                                                        str(e.out / "x")], "x", "same file"),
    ("audit --force into a folder of other files", lambda e: ["audit", M, "--force", "--out", str(_folder_with(e, "mine", "thesis.tex"))],
     "mine", "choose an empty folder"),
    ("harden --force into a folder of other files", lambda e: ["harden", M, "--force", "--layers", "1-2", "--max-steps", "1", "--rows", "4",
                                                               "--out", str(_folder_with(e, "work", "notes.md"))], "work", "choose an empty folder"),
    ("eval openai key over plain http to another host", lambda e: ["eval", "--backend", "openai", "--base-url", "http://10.9.8.7:8000/v1",
                                                                   "--model", "m", "--api-key-env", "MATRIX_KEY", "--metrics", "harmful",
                                                                   "--limit", "1"], "10.9.8.7", "plain http"),
    ("eval openai server redirects elsewhere", lambda e: ["eval", "--backend", "openai", "--base-url", e.redirect_url, "--model", "m",
                                                          "--api-key-env", "MATRIX_KEY", "--metrics", "harmful", "--limit", "1"],
     "127.0.0.1", "redirected"),
    ("eval judge answers 401", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.unauthorized_url, "--judge-api-key-env", "MATRIX_KEY",
                                          "--limit", "1", "--max-new-tokens", "2"], "127.0.0.1", "HTTP 401"),
    ("eval judge floods 50 MB", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.flood_url, "--limit", "1", "--max-new-tokens", "2"],
     "127.0.0.1", "MB"),
    ("eval judge key variable unset", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.garbage_url, "--judge-api-key-env",
                                                 "NO_SUCH_VARIABLE_HERE", "--limit", "1"], "", "--judge-api-key-env"),
    ("check baseline nested 100000 deep", lambda e: ["check", str(e.eval_json), "--baseline", str(e.file("deep.json", "[" * 100000 + "]" * 100000))],
     "deep.json", "JSON"),
    ("report of a report nested 100000 deep", lambda e: ["report", str(e.file("deep.json", '{"a": ' + "[" * 100000 + "]" * 100000 + "}"))],
     "deep.json", "JSON"),
    ("scan JSON prompts nested 100000 deep", lambda e: ["scan", M, "--normal", str(e.file("deep.json", "[" * 100000 + "]" * 100000))],
     "deep.json", "nested"),
    ("scan JSONL prompts nested 100000 deep", lambda e: ["scan", M, "--normal", str(e.file("deep.jsonl", "[" * 100000 + "]" * 100000 + "\n"))],
     "deep.jsonl", "line 1"),
    ("check policy nested 5000 deep", lambda e: ["check", str(e.eval_json), "--baseline", str(e.eval_json), "--policy",
                                                 str(e.file("deep.toml", "a = " + "[" * 5000 + "1" + "]" * 5000 + "\n"))], "deep.toml", "policy"),
    ("scan a model path with a newline", lambda e: ["scan", str(e.inp / "two\nlines.gguf")], "two\\nlines.gguf", "not found"),
    ("scan a model path with markup", lambda e: ["scan", str(e.inp / "[/INST][bold]x.gguf")], "[/INST][bold]x.gguf", "not found"),
    # -- the verdict ----------------------------------------------------------------------------------------------
    ("check reports measured differently", lambda e: ["check", str(_variant(e, "other.json", template="alpaca", limit=7)), "--baseline",
                                                      str(e.eval_json)], "other.json", "template alpaca"),
    ("check baseline value null", lambda e: ["check", str(e.eval_json), "--baseline", str(_variant(e, "null.json", null="harmful_rate"))],
     "null.json", "harmful_rate disagrees with harmful_by_set"),
    ("eval kl without --base", lambda e: ["eval", M, "--metrics", "kl"], "", "--base"),
    ("eval kl from a missing base", lambda e: ["eval", M, "--metrics", "kl", "--base", str(e.inp / "gone.gguf")], "gone.gguf", "not found"),
    ("eval kl positions zero", lambda e: ["eval", M, "--metrics", "kl", "--base", M, "--kl-positions", "0"], "", "--kl-positions"),
    ("eval llama-guard with a local judge", lambda e: ["eval", M, "--metrics", "judge", "--judge-model", str(e.gguf), "--judge-format",
                                                      "llama-guard"], "Q4_1.gguf", "--judge URL"),
    ("eval unknown judge format", lambda e: ["eval", M, "--metrics", "judge", "--judge", e.garbage_url, "--judge-format", "vibes"], "",
     "--judge-format"),
    ("report --html into a missing folder", lambda e: ["report", str(e.eval_json), "--html", str(e.out / "no" / "r.html")], "no", "folder"),
]


def _variant(e: Env, name: str, null: str | None = None, **changes) -> Path:
    """The matrix's eval report with some settings changed (measured differently), or one value null."""
    data = json.loads(e.eval_json.read_text()) | changes
    if null:
        data[null]["value"] = None
    return e.file(name, json.dumps(data))


def _folder_with(e: Env, folder: str, name: str) -> Path:
    (e.inp / folder).mkdir()
    return e.file(f"{folder}/{name}", "kept as it is").parent


@pytest.fixture(scope="module")
def eval_report(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("matrix") / "base.json"
    r = CliRunner().invoke(main, ["eval", str(tiny_model_dir), "--metrics", "harmful", "--limit", "4", "--max-new-tokens", "2",
                                  "--bootstrap", "20", "--json", str(out), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def servers():
    """127.0.0.1 endpoints: one refusing connections, one that accepts and never answers, one answering garbage."""
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepts into the backlog, never reads or answers

    class Garbage(http.server.BaseHTTPRequestHandler):
        """/ garbage, /redirect a 302 to another port, /unauthorized a 401, /flood a 50 MB answer."""

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers, body = 200, {}, b"<html>definitely not JSON"
            if self.path.startswith("/redirect"):
                status, headers, body = 302, {"Location": f"http://127.0.0.1:{refused.getsockname()[1]}/steal"}, b""
            elif self.path.startswith("/unauthorized"):
                status, body = 401, b'{"error": "bad key"}'
            elif self.path.startswith("/flood"):
                headers, body = {"Content-Length": str(50 << 20)}, b"{" * (1 << 16)
            self.send_response(status)
            for k, v in ({"Content-Length": str(len(body))} | headers).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    garbage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    garbage.daemon_threads = True
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}/v1" for s in (refused, hung)]
    g = f"http://127.0.0.1:{garbage.server_address[1]}"
    yield urls + [f"{g}/v1", f"{g}/redirect/v1", f"{g}/unauthorized/v1", f"{g}/flood/v1"]
    garbage.shutdown()
    refused.close()
    hung.close()


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("name,make_args,path_part,message", CASES, ids=[c[0] for c in CASES])
def test_failure_matrix(name, make_args, path_part, message, tmp_path, tiny_model_dir, bundled_gguf, eval_report,
                        servers, monkeypatch):
    env = Env(tmp_path / "in", tmp_path / "out", tiny_model_dir, bundled_gguf, eval_report, *servers)
    env.inp.mkdir()
    env.out.mkdir()
    monkeypatch.setenv("SAFETY_AUDIT_TEMPLATE_SECONDS", "3")  # a template that never ends is cut after 3 s
    monkeypatch.setenv("MATRIX_KEY", "sk-matrix-secret")
    args = [str(tiny_model_dir) if a == M else a for a in make_args(env)]
    if name.endswith("full disk"):
        (env.out / "full").mkdir()
        real = Path.write_text

        def no_space(self, *a, **kw):
            if str(self).startswith(str(env.out / "full")):
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real(self, *a, **kw)

        monkeypatch.setattr(Path, "write_text", no_space)
    before_in, before_out = _digest(env.inp), _digest(env.out)
    try:
        r = CliRunner().invoke(main, args)
    finally:
        for d in env.out.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
    assert r.exit_code == 2, f"{name}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    lines = r.stderr.strip().splitlines()
    errors = [x for x in lines if any(w in x.lower() for w in ("error", "traceback", "warning", "exception"))]
    assert errors == lines[-1:] and lines[-1].startswith("error: "), f"{name}: not one error line last:\n{r.stderr}"
    line = lines[-1]  # progress/status lines may precede it ("loading ..."), nothing else
    assert message.lower() in line.lower(), f"{name}: {line!r} does not say {message!r}"
    assert path_part in line, f"{name}: {line!r} does not name {path_part!r}"
    assert _digest(env.inp) == before_in, f"{name}: an input file changed"
    assert _digest(env.out) == before_out, f"{name}: output left behind: {set(_digest(env.out)) - set(before_out)}"
    assert not (tmp_path / "UNPICKLED").exists(), f"{name}: a pickle was loaded"
    assert "sk-matrix-secret" not in r.output + r.stderr, f"{name}: the API key was printed"


def test_the_matrix_is_big_and_covers_every_command():
    commands = {c[1](None)[0] if False else c[0].split()[0] for c in CASES}
    assert len(CASES) >= 40
    assert {"scan", "locate", "harden", "eval", "check", "compare", "reference", "attention", "audit", "report"} <= commands


def test_check_regression_is_exit_1_not_2(eval_report, tmp_path):
    """The one exit code that is not 2 (or 3, undecided): a candidate worse than its baseline, on enough prompts
    to tell (the real report's harmful entry, widened to 520 prompts: 30% answered against none)."""
    data = json.loads(eval_report.read_text())
    data["limit"] = None
    worse = dict(data, harmful_rate={**data["harmful_rate"], "value": 0.3, "n": 520, "outcomes": ("1" * 156).ljust(520, "0")})
    better = dict(data, harmful_rate={**data["harmful_rate"], "value": 0.0, "n": 520, "outcomes": "0" * 520})
    for d in (worse, better):
        d.pop("over_refusal_rate", None), d.pop("over_refusal_by_set", None), d.pop("harmful_by_set", None)
    cand = write_lines(tmp_path / "cand.json", [json.dumps(worse)])
    base = write_lines(tmp_path / "base.json", [json.dumps(better)])
    r = CliRunner().invoke(main, ["check", str(cand), "--baseline", str(base)])
    assert r.exit_code == 1 and "REGRESSION" in r.output, r.output


@pytest.mark.model
def test_llama_chat_template_escape_is_one_line_error(bundled_gguf, monkeypatch):
    """llama.cpp side: the GGUF's template runs in llama-cpp-python's sandbox, inside the bounded child; what
    it raises, exhausts or never finishes is our one-line error naming the file, and the process lives on."""
    from auditor.backends import open_backend
    from auditor.errors import AuditError
    from auditor.io.models import resolve_model

    monkeypatch.setenv("SAFETY_AUDIT_TEMPLATE_SECONDS", "3")
    b = open_backend(resolve_model(str(bundled_gguf)), "llama", threads=1)
    try:
        for template in (ESCAPE, *HOSTILE_TEMPLATES.values()):
            b.chat_template = template
            with pytest.raises(AuditError, match="chat template cannot be rendered") as e:
                b.encode("hi", "chat")
            assert str(bundled_gguf) in str(e.value)
            b.close_chat()  # the next template in a new child
        b.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
        assert b.render_chat("hi") == "<hi>"
    finally:
        b.close()


def _shaped(report: Path, tmp: Path, name: str, edit) -> Path:
    data = json.loads(report.read_text())
    edit(data)
    p = tmp / name
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["harmful_rate"].update(value="0.5"), "value is not a number"),
    (lambda d: d["harmful_rate"].update(value=float("nan")), "value is not a number"),
    (lambda d: d["harmful_rate"].update(n=-3), "n is not a count"),
    (lambda d: d["harmful_rate"].update(ci95=[0, 1, 2]), "ci95"),
    (lambda d: d["harmful_rate"].update(outcomes=[1, 0]), "outcomes is not text"),
    (lambda d: d.update(harmful_rate=[0.5]), "is not an object"),
    (lambda d: d.update(over_refusal_by_set={"x": 3}), "over_refusal_by_set[x] is not an object"),
    (lambda d: d.update(classifier="keyword"), "classifier is not an object"),
], ids=["value text", "value nan", "n negative", "ci of three", "outcomes list", "metric a list", "set a number",
        "classifier text"])
@pytest.mark.parametrize("command", ["check", "compare", "report"])
def test_reports_with_fields_of_the_wrong_shape_are_one_line_errors(eval_report, tmp_path, edit, message, command):
    bad = _shaped(eval_report, tmp_path, "shaped.json", edit)
    args = {"check": ["check", str(bad), "--baseline", str(eval_report)], "compare": ["compare", str(eval_report), str(bad)],
            "report": ["report", str(bad), "--html", str(tmp_path / "p.html")]}[command]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "shaped.json" in line and "Traceback" not in r.stderr, r.stderr
    assert message in line, line
    assert not (tmp_path / "p.html").exists()
