"""The drift metric (eval --metrics kl --base BASE): zero for a model against itself, positive for a copy with
two layers scaled, on torch and on llama.cpp, at the first answer token and teacher-forced over k tokens."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import main
from auditor.core.drift import kl
from auditor.weights.scaling import scaled


def test_kl_of_known_distributions():
    p = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]], dtype=torch.float64))
    q = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    out = kl(p, q)
    assert out[0] == 0.0  # a zero-probability token of the base adds nothing (no 0 * -inf)
    assert out[1].item() == pytest.approx(0.9 * torch.log(torch.tensor(1.8)).item() + 0.1 * torch.log(torch.tensor(0.2)).item())


def _eval_kl(model, base, tmp_path, name, k=1, extra=()):
    out = tmp_path / f"{name}.json"
    r = CliRunner().invoke(main, ["eval", str(model), "--metrics", "kl", "--base", str(base), "--limit", "6",
                                  "--kl-positions", str(k), "--bootstrap", "100", "--json", str(out), "-q", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())["kl_divergence"]


@pytest.fixture(scope="module")
def scaled_copy(tiny_model, tmp_path_factory):
    model, tok = tiny_model
    d = tmp_path_factory.mktemp("scaled-tiny")
    with scaled(model, [0, 1], 1.5):
        model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("k", [1, 3])
def test_drift_on_torch(tiny_model_dir, scaled_copy, tmp_path, k):
    same = _eval_kl(tiny_model_dir, tiny_model_dir, tmp_path, "same", k)
    assert same["value"] == 0.0 and same["n"] == 6 and same["positions"] == k
    moved = _eval_kl(scaled_copy, tiny_model_dir, tmp_path, "moved", k)
    assert moved["value"] > 1e-4 and moved["ci95"][0] > 0 and len(moved["items"]) == 6
    assert moved["direction"].startswith("KL(base || model)") and moved["base_sha256"] == same["base_sha256"]


@pytest.mark.model
def test_drift_on_llama_cpp(bundled_gguf, tmp_path):
    from auditor.weights.gguf_scaling import scale_gguf

    copy = tmp_path / "scaled.gguf"
    scale_gguf(bundled_gguf, copy, [8, 9], 1.3)
    same = _eval_kl(bundled_gguf, bundled_gguf, tmp_path, "same", extra=("--threads", "2"))
    assert same["value"] < 1e-9
    moved = _eval_kl(copy, bundled_gguf, tmp_path, "moved", extra=("--threads", "2"))
    assert moved["value"] > 1e-3 and moved["ci95"][0] > 0


def test_drift_needs_a_base_and_positions(tiny_model_dir, tmp_path):
    for args, message in ((["--metrics", "kl"], "needs --base"),
                          (["--metrics", "kl", "--base", str(tmp_path / "nope.gguf")], "not found"),
                          (["--metrics", "kl", "--base", str(tiny_model_dir), "--kl-positions", "0"], "--kl-positions")):
        r = CliRunner().invoke(main, ["eval", str(tiny_model_dir), *args])
        assert r.exit_code == 2 and message in r.output, r.output
