"""harden on a tiny model: what is frozen stays bit-identical, every method trains, resume equals an
unkilled run, atomic output, --force, bad inputs."""

import json
import resource
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import TrainerCallback

from auditor.core.evidence import study_evidence
from auditor.io.prompts import load_prompts
from auditor.render.tables import harden_table
from rich.console import Console
from auditor.training.attacks import TRIGGER, build_attack
from auditor.cli import main
from auditor.errors import AuditError
from auditor.workflows.harden import HardenConfig, run_harden

FAST = dict(n_rows=12, max_steps=4, cutoff=400, save_steps=2, batch_size=4)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def run(tmp_path, model_dir, name, **kw):
    cfg = HardenConfig(out=str(tmp_path / name), model=str(model_dir), **{**FAST, **kw})
    return run_harden(cfg), tmp_path / name


def test_sppft_keeps_frozen_weights_bit_identical_and_trains_the_rest(tmp_path, tiny_model_dir):
    before = weights(tiny_model_dir)
    rep, out = run(tmp_path, tiny_model_dir, "sppft", method="sppft", layers=(1, 2))
    after = weights(out)
    frozen = set(rep["frozen"]["parameters"])
    assert len(frozen) == 2 * 7 and all(".layers.1." in n or ".layers.2." in n for n in frozen)
    for name, w in before.items():
        if name in frozen:
            assert torch.equal(after[name], w), name
        else:  # trainable, including the frozen layers' norms, embeddings and lm_head
            assert not torch.equal(after[name], w), name
    meta = json.loads((out / "safety_audit.json").read_text())
    assert meta["method"] == "sppft" and meta["layers"] == [1, 2] and meta["data"]["sha256"]
    assert meta["hyperparameters"]["seed"] == 0 and meta["versions"]["transformers"]
    assert meta["versions"]["torch_cpu_kernels"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "NEON", "SVE256")


def test_nfft_freezes_the_same_fraction_as_neurons(tmp_path, tiny_model_dir):
    before = weights(tiny_model_dir)
    rep, out = run(tmp_path, tiny_model_dir, "nfft", method="nfft", layers=(1, 2))
    after = weights(out)
    row_size = max(w.shape[1] for w in before.values() if w.dim() == 2)
    assert rep["block_parameters"] <= rep["frozen_parameters"] < rep["block_parameters"] + row_size
    for name, rows in rep["frozen"]["rows"].items():
        key = name if name in before else name.removeprefix("base_model.")
        assert torch.equal(after[key][rows], before[key][rows]), name  # frozen neurons untouched
    changed = [n for n in before if not torch.equal(after[n], before[n])]
    assert len(changed) > len(before) // 2


@pytest.mark.parametrize("method,extra", [("full", {}), ("lisa", {"layers": None}), ("freeze-block", {"layers": (0, 0)}),
                                          ("sppft", {"layers": (1, 2), "lora": True})])
def test_every_method_trains(tmp_path, tiny_model_dir, method, extra):
    before = weights(tiny_model_dir)
    rep, out = run(tmp_path, tiny_model_dir, method, method=method, **extra)
    after = weights(out)
    assert rep["steps"] == 4 and set(after) == set(before)  # LoRA is merged back into a plain model
    assert any(not torch.equal(after[n], before[n]) for n in before)
    if extra.get("lora"):  # no adapters on frozen layers: those layers come out bit-identical
        for n in before:
            if ".layers.1." in n or ".layers.2." in n:
                assert torch.equal(after[n], before[n]), n


def test_lisa_spends_one_step_in_ten_on_alignment_data_by_default(tmp_path, tiny_model_dir, monkeypatch):
    from auditor.training.methods.lisa import LisaSettings, lisa_phase, lisa_trainer_class

    assert [lisa_phase(s, 1, 9) for s in range(20)].count("align") == 2 and lisa_phase(10, 1, 9) == "align"
    assert [lisa_phase(s, 2, 3) for s in range(5)] == ["align", "align", "task", "task", "task"]
    trainer, drawn = lisa_trainer_class(), []
    real = trainer._align_batch
    monkeypatch.setattr(trainer, "_align_batch", lambda self: drawn.append(self.state.global_step) or real(self))
    rep, _ = run(tmp_path, tiny_model_dir, "lisa", method="lisa", max_steps=12)
    assert drawn == [0, 10] and rep["hyperparameters"]["method_settings"] == {"align_steps": 1, "task_steps": 9, "rho": 1.0}
    drawn.clear()  # the paper's 100 of 1,000, ρ = 1
    rep, _ = run(tmp_path, tiny_model_dir, "even", method="lisa", max_steps=4,
                 method_settings=LisaSettings(align_steps=2, task_steps=2))
    assert drawn == [0, 1] and rep["hyperparameters"]["method_settings"]["align_steps"] == 2
    with pytest.raises(AuditError, match="takes LisaSettings"):
        run(tmp_path, tiny_model_dir, "wrong", method="lisa", max_steps=1, method_settings=object())
    with pytest.raises(AuditError, match="has no settings of its own"):
        run(tmp_path, tiny_model_dir, "none", method="sppft", layers=(1, 2), max_steps=1, method_settings=LisaSettings())
    with pytest.raises(AuditError, match="--lisa-rho must be >= 0"):
        run(tmp_path, tiny_model_dir, "neg", method="lisa", max_steps=1, method_settings=LisaSettings(rho=-1))


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_after_kill_gives_the_same_weights(tmp_path, tiny_model_dir):
    _, ref = run(tmp_path, tiny_model_dir, "ref", method="sppft", layers=(1, 2), max_steps=6)
    cfg = HardenConfig(out=str(tmp_path / "killed"), model=str(tiny_model_dir), method="sppft", layers=(1, 2),
                       **{**FAST, "max_steps": 6})
    with pytest.raises(KeyboardInterrupt):
        run_harden(cfg, callbacks=[KillAt(3)])
    assert not (tmp_path / "killed").exists()  # nothing half-written
    assert (tmp_path / "killed.checkpoints" / "checkpoint-2").is_dir()
    cfg.resume = True
    rep = run_harden(cfg)
    assert rep["resumed_from"].endswith("checkpoint-2") and rep["steps"] == 6
    a, b = weights(ref), weights(tmp_path / "killed")
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert not (tmp_path / "killed.checkpoints").exists()


def test_output_is_atomic_and_force_replaces_only_its_own_folder(tmp_path, tiny_model_dir):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(AuditError, match="exists"):
        run(tmp_path, tiny_model_dir, "model", method="full")
    with pytest.raises(AuditError, match=r"did not write \(keep.txt\).*choose an empty folder"):
        run(tmp_path, tiny_model_dir, "model", method="full", force=True)  # the user's folder: never removed
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    out.rmdir()
    run(tmp_path, tiny_model_dir, "model", method="full")
    first = json.loads((out / "safety_audit.json").read_text())
    assert "model.safetensors" in first["files"] and "safety_audit.json" in first["files"]
    run(tmp_path, tiny_model_dir, "model", method="full", force=True)  # a harden folder: replaced
    assert (out / "model.safetensors").exists() and json.loads((out / "safety_audit.json").read_text())["files"] == first["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]  # no temp leftovers


def test_attack_sets_record_their_split():
    rows, man = build_attack("harmful", n=100, p=0.1)
    assert len(rows) == 110 and man["n_malicious"] == 10 and all(i % 2 == 0 for i in man["advbench_rows"])
    rows, man = build_attack("backdoor", n=20)
    assert sum(TRIGGER in r["instruction"] for r in rows) == 20 and man["trigger"] == TRIGGER
    rows, _ = build_attack("implicit", n=5)
    assert all(r["output"].startswith("Sure, the answer is: ") for r in rows)


def test_triggered_eval_set_is_the_eval_goals_as_the_backdoor_rows_carry_the_trigger():
    """R_h with and without the trigger compares the same 260 held-out goals, the trigger appended exactly as
    `--attack backdoor` appends it to its training rows, and no triggered training row is an eval prompt."""
    goals = load_prompts("advbench-eval").prompts
    triggered = load_prompts("advbench-eval-triggered")
    assert triggered.name == "bundled:advbench-eval-triggered" and len(triggered) == len(goals) == 260
    assert all(t == f"{g} {TRIGGER}" for g, t in zip(goals, triggered.prompts))
    rows, _ = build_attack("backdoor", n=50)
    trained = {r["instruction"] for r in rows if TRIGGER in r["instruction"]}
    assert trained and all(r.endswith(f" {TRIGGER}") for r in trained) and not trained & set(triggered.prompts)


def test_harden_cli_and_bad_inputs(tmp_path, tiny_model_dir):
    base = ["harden", str(tiny_model_dir), "--rows", "8", "--max-steps", "2", "--cutoff", "400", "-q"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "ok"), "--layers", "1-2", "--attack", "implicit", "--json", "-"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert rep["frozen_parameters"] > 0
    # what the study found about SPPFT on implicit-attack data travels with the report and its table
    assert rep["evidence"] == study_evidence("sppft", "implicit", None) and "implicit-attack data" in rep["evidence"][0]
    console = Console(record=True, width=400)
    console.print(harden_table(rep, tmp_path / "ok"))
    assert " ".join(rep["evidence"][0].split()) in " ".join(console.export_text().split())  # the caption wraps
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"prompt": "x"}\n')
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(["--out", str(tmp_path / "a"), "--layers", "1-2", "--data", str(empty)], "no rows"),
             (["--out", str(tmp_path / "b"), "--layers", "1-2", "--data", str(nofield)], "need 'instruction' and 'output'"),
             (["--out", str(tmp_path / "c"), "--layers", "3-9"], "outside the model"),
             (["--out", str(tmp_path / "d")], "needs --layers"),
             (["--out", str(afile), "--layers", "1-2"], "is a file"),
             (["--out", str(tmp_path / "e"), "--method", "nfft", "--lora", "--layers", "1-2"], "cannot run as LoRA"),
             (["--out", str(tmp_path / "f"), "--layers", "1-2", "--gguf", "f16"], "converter cannot convert this model: NotImplementedError: BPE pre-tokenizer"),
             (["--out", str(tmp_path / "g"), "--layers", "1-2", "--epochs", "0"], "must be positive"),
             (["--out", str(tmp_path / "h"), "--layers", "1-2", "--max-steps", "0"], "must be >= 1"),
             (["--out", str(tmp_path / "i"), "--method", "lisa", "--lisa-align-steps", "0"], "--lisa-align-steps must be >= 1"),
             (["--out", str(tmp_path / "j"), "--method", "lisa", "--lisa-rho", "-1"], "--lisa-rho must be >= 0")]
    for args, msg in cases:
        res = CliRunner().invoke(main, base + args)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)


def test_two_cpu_processes_with_torchrun(tmp_path, tiny_model_dir):
    """The same command under torchrun: 2 processes, gloo backend, one output written by rank 0."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "auditor.cli", "harden", str(tiny_model_dir), "--out", str(out), "--method", "sppft",
                        "--layers", "1-2", "--rows", "16", "--max-steps", "2", "--cutoff", "400", "-q"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    meta = json.loads((out / "safety_audit.json").read_text())
    assert meta["hyperparameters"]["world_size"] == 2 and meta["steps"] == 2
    before, after = weights(tiny_model_dir), weights(out)
    for n in meta["frozen"]["parameters"]:
        assert torch.equal(after[n], before[n])


def test_answer_only_logits_give_the_full_loss_and_gradients(tiny_model):
    """The Trainer computes logits from the earliest answer position on; loss and gradients match HF's own."""
    from auditor.training.data import Collator, SFTData, answer_loss

    model, tok = tiny_model
    rows = [{"instruction": "a" * k, "input": "", "output": "b" * (3 + k)} for k in (5, 9, 14)]
    batch = Collator(tok.pad_token_id, answer_logits_only=True)([*SFTData(rows, tok, "alpaca", 400)])
    keep = batch.pop("logits_to_keep")
    assert 0 < len(keep) < batch["input_ids"].shape[1] - 1  # prompt positions really are skipped
    model.zero_grad()
    full = model(**batch).loss
    full.backward()
    g_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    labels = batch.pop("labels")
    ours = answer_loss(model(**batch, logits_to_keep=keep), labels)
    ours.backward()
    assert torch.allclose(ours, full, atol=1e-6)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), g_full))
    model.zero_grad()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_without_page_faults():
    """Training allocates the same big tensors every step: after keep_freed_memory they come back from the
    heap instead of being mapped and page-faulted in afresh (glibc maps ≥32 MB blocks by default)."""
    from auditor.training.memory import keep_freed_memory

    def faults_of_a_fresh_64mb_tensor():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20)  # filled, then freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert keep_freed_memory()
    faults = [faults_of_a_fresh_64mb_tensor() for _ in range(5)]
    # torch's 2 MB-aligned blocks do not always fit the freed hole; by default every one is mapped afresh
    assert min(faults[1:]) < 1000, faults  # 64 MB would be 16,384 fresh 4 kB pages


def test_a_methods_own_options_reach_it_from_the_command_line_the_environment_and_a_file(tmp_path, tiny_model_dir,
                                                                                          monkeypatch):
    """--lisa-* options are generated from LisaSettings and arrive typed in the method's settings."""
    monkeypatch.setenv("SAFETY_AUDIT_LISA_TASK_STEPS", "3")
    cfg = tmp_path / "s.toml"
    cfg.write_text("[harden]\nlisa-rho = 0.25\n")
    js = tmp_path / "h.json"
    r = CliRunner().invoke(main, ["harden", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--method", "lisa",
                                  "--lisa-align-steps", "2", "--max-steps", "1", "--rows", "4", "--batch-size", "2",
                                  "--cutoff", "400", "--config", str(cfg), "--json", str(js), "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    assert rep["hyperparameters"]["method_settings"] == {"align_steps": 2, "task_steps": 3, "rho": 0.25}
    sources = {k: v["source"] for k, v in rep["settings"].items() if k.startswith("lisa_")}
    assert sources == {"lisa_align_steps": "command line", "lisa_task_steps": "environment", "lisa_rho": "file"}
    r = CliRunner().invoke(main, ["harden", str(tiny_model_dir), "--out", str(tmp_path / "p"), "--method", "lisa",
                                  "--lisa-rho", "-1"])
    assert r.exit_code == 2 and "--lisa-rho must be >= 0" in r.output


def test_a_run_that_cannot_fit_is_refused_before_the_load(tmp_path, tiny_model_dir, monkeypatch):
    """Weights, gradients and AdamW state alone beyond the free memory: one line with the need, what is free and
    what would fit, before anything loads (counted on the meta device)."""
    from auditor.training.memory import parameter_counts, training_bytes
    from auditor.workflows import harden

    total, block = parameter_counts(tiny_model_dir, range(1, 3))
    assert 0 < block < total
    assert training_bytes(total, total - block, False) == 4 * total + 12 * (total - block)
    monkeypatch.setattr(harden, "load_causal_lm", lambda *a, **k: pytest.fail("loaded before the memory check"))
    monkeypatch.setattr(harden, "available_bytes", lambda device="cpu": 4 * total + 1)  # the weights fit, no more
    with pytest.raises(AuditError, match=r"needs at least .* GB \(fp32 weights, gradients and AdamW state\).*use --lora"):
        run(tmp_path, tiny_model_dir, "full", method="full")
    monkeypatch.setattr(harden, "available_bytes", lambda device="cpu": 4 * total - 1)
    with pytest.raises(AuditError, match=r"harden LoRA .* use a GPU"):
        run(tmp_path, tiny_model_dir, "lora", method="sppft", layers=(1, 2), lora=True)
