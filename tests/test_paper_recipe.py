"""`harden --compat paper`: the authors' fine-tuning recipe (their Code/Fine_tune/SPPFT.py) reaches the
Trainer setting by setting, is recorded in safety_audit.json, and reads --layers as their freezing code does;
`--grad-accum` is a normal option for everyone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from auditor.errors import AuditError
from auditor.io.prompts import ALPACA, ALPACA_INPUT, load_task_rows
from auditor.training.data import SFTData
from auditor.training.paper import frozen_by_their_code, scaled_by_their_code
from auditor.weights.layers import block_parameters
from auditor.workflows.harden import HardenConfig, run_harden


class Seen:
    """A TrainerCallback that keeps what the Trainer was given."""

    def __init__(self):
        from transformers import TrainerCallback

        seen = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                seen.args = args

        self.callback = Callback()


def _their_tokens(tok, row: dict, cutoff: int = 256) -> list[int]:
    """SPPFT.py's tokenize(generate_prompt(...)), written out: one text, truncated, <|eot_id|>'s id appended."""
    text = (ALPACA_INPUT.format(q=row["instruction"], i=row["input"]) if row["input"] else
            ALPACA.format(q=row["instruction"])) + row["output"]
    ids = tok(text, truncation=True, max_length=cutoff)["input_ids"]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    return ids + [eot] if ids[-1] != eot and len(ids) < cutoff else ids


def _keep_trainer(monkeypatch, seen):
    from auditor.workflows import harden

    def keep(*a, **k):
        seen.trainer = real(*a, **k)
        seen.train, seen.eval = seen.trainer.train_dataset, seen.trainer.eval_dataset
        return seen.trainer

    real = harden.build_trainer
    monkeypatch.setattr(harden, "build_trainer", keep)


def test_the_authors_recipe_reaches_the_trainer(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    _, tok = tiny_model
    seen = Seen()
    _keep_trainer(monkeypatch, seen)
    out = tmp_path / "paper"
    rep = run_harden(HardenConfig(out=str(out), model=str(tiny_model_dir), method="sppft", layers=(0, 3), n_rows=120,
                                  compat="paper", lr=1e-3, epochs=1.0, batch_size=8), callbacks=[seen.callback])
    a = seen.args
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps, a.num_train_epochs, a.learning_rate,
            a.warmup_steps) == (4, 32, 3.0, 3e-5, 100)  # the flags given (lr, epochs, batch) lose to the recipe
    assert a.load_best_model_at_end and a.eval_steps == 550 and a.save_steps == 550 and a.optim == "adamw_torch"
    assert len(seen.eval) == 100 and len(seen.train) == 20  # 100 of 120 rows held out
    rows = load_task_rows("alpaca-train")[:120]
    texts = {tuple(_their_tokens(tok, r)) for r in rows}
    for item in seen.train.items + seen.eval.items:
        assert item["labels"] == item["input_ids"]  # loss on the prompt and the answer (train_on_inputs)
        assert tuple(item["input_ids"]) in texts  # tokenized as theirs: no EOS, <|eot_id|>'s id (here: <unk>)
        assert len(item["input_ids"]) == 256 or item["input_ids"][-1] == tok.unk_token_id != tok.eos_token_id
    short = SFTData([{"instruction": "Hi.", "input": "", "output": "Hello."}], tok, "alpaca", 256, paper=True).items[0]
    assert short["input_ids"] == tok(ALPACA.format(q="Hi.") + "Hello.")["input_ids"] + [tok.unk_token_id]
    hyper = rep["hyperparameters"]
    assert hyper["compat"] == "paper" and list(hyper["layers_as_given"]) == [0, 3] and hyper["effective_batch"] == 128
    assert hyper["val_rows"] == 100 and rep["data"]["validation_rows"] == 100 and hyper["template"] == "alpaca"
    assert rep["layers"] == [1, 2] and rep["steps"] == 3  # 20 rows: one step per epoch; layers strictly between 0 and 3
    saved = json.loads((out / "safety_audit.json").read_text())
    assert saved["hyperparameters"]["grad_accum"] == 32 and saved["hyperparameters"]["cutoff"] == 256
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    frozen = block_parameters(tiny_model[0], (1, 2))
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(before["model.layers.3.mlp.down_proj.weight"], after["model.layers.3.mlp.down_proj.weight"])


def test_grad_accum_is_an_option_for_everyone(tiny_model_dir, tmp_path, monkeypatch):
    seen = Seen()
    _keep_trainer(monkeypatch, seen)
    rep = run_harden(HardenConfig(out=str(tmp_path / "o"), model=str(tiny_model_dir), method="full", n_rows=16,
                                  batch_size=2, grad_accum=4, epochs=1.0, cutoff=400), callbacks=[seen.callback])
    assert seen.args.gradient_accumulation_steps == 4 and seen.eval is None
    assert rep["steps"] == 2 and rep["hyperparameters"]["effective_batch"] == 8  # 16 rows / (2 x 4)
    assert all(x == -100 for x in seen.train.items[0]["labels"][:3])  # ours: loss on the answer only


def test_an_explicit_grad_accum_under_the_authors_recipe_matches_their_steps_on_less_data(tiny_model_dir, tmp_path,
                                                                                        monkeypatch):
    """On 797 rows their batch of 128 makes 18 optimizer steps, under their 100 warm-up steps; `--grad-accum 6`
    (batch 24) gives their ~94 steps on 4,000 rows. The one other setting kept when given: everything else stays
    theirs, and the choice is recorded. Without --compat the default stays 1."""
    from click.testing import CliRunner

    from auditor.cli import main
    from auditor.workflows import harden
    from auditor.workflows.harden import paper_config

    assert paper_config(HardenConfig(out="o", compat="paper")).grad_accum == 32
    assert paper_config(HardenConfig(out="o")).grad_accum == 1
    mine = paper_config(HardenConfig(out="o", compat="paper", grad_accum=6, epochs=1.0, lr=1e-3))
    assert (mine.grad_accum, mine.batch_size, mine.epochs, mine.lr, mine.warmup_steps) == (6, 4, 3.0, 3e-5, 100)
    assert paper_config(mine) == mine  # applied once
    for compat in (None, "paper"):  # a bad value is refused, with the recipe or without: never replaced by a default
        bad = CliRunner().invoke(main, ["harden", str(tiny_model_dir), "--out", str(tmp_path / "bad"), "--method", "full",
                                        "--grad-accum", "0", "-q", *(["--compat", compat] if compat else [])])
        assert bad.exit_code == 2 and "--grad-accum must be >= 1 (got 0)" in bad.output and not (tmp_path / "bad").exists()
    seen = Seen()
    out = tmp_path / "steps"
    monkeypatch.setattr(harden, "progress_callback", lambda *a: seen.callback)
    r = CliRunner().invoke(main, ["harden", str(tiny_model_dir), "--out", str(out), "--method", "full", "--rows", "148",
                                  "--compat", "paper", "--grad-accum", "2", "--json", "-", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert seen.args.gradient_accumulation_steps == 2 and seen.args.learning_rate == 3e-5
    hyper = json.loads((out / "safety_audit.json").read_text())["hyperparameters"]
    assert hyper["grad_accum"] == 2 and hyper["effective_batch"] == 8 and hyper["compat"] == "paper"
    assert json.loads(r.stdout)["steps"] == 3 * 6 and hyper["warmup_steps"] == 100  # 48 rows / 8 = 6 steps an epoch


def test_the_authors_recipe_in_the_chat_template_keeps_everything_else_theirs(tiny_model, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    """A chat model's refusals live in its chat template: `--compat paper --template chat` renders the prompt there,
    and every other setting, the loss on every token and their end-of-text rule stay theirs."""
    from auditor.workflows.harden import paper_config

    _, tok = tiny_model
    theirs = paper_config(HardenConfig(out="o", model=str(tiny_model_dir), compat="paper"))
    chat = paper_config(HardenConfig(out="o", model=str(tiny_model_dir), compat="paper", template="chat", lr=1e-3))
    assert theirs.template == "alpaca" and chat.template == "chat"  # the default is theirs; an explicit choice stays
    assert (chat.lr, chat.grad_accum, chat.epochs, chat.val_rows) == (theirs.lr, theirs.grad_accum, theirs.epochs, 100)
    rows = load_task_rows("alpaca-train")[:6]
    items = SFTData(rows, tok, "chat", 256, str(tiny_model_dir), paper=True).items
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    for row, item in zip(rows, items):
        prompt = tok.apply_chat_template([{"role": "user", "content": row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")}],
                                         tokenize=False, add_generation_prompt=True)
        ids = tok(prompt + row["output"], truncation=True, max_length=256, add_special_tokens=False)["input_ids"]
        assert item["input_ids"] == (ids + [eot] if len(ids) < 256 else ids) and item["labels"] == item["input_ids"]
    assert [i["input_ids"] for i in SFTData(rows, tok, "alpaca", 256, paper=True).items] == [_their_tokens(tok, r) for r in rows]
    seen = Seen()
    _keep_trainer(monkeypatch, seen)
    rep = run_harden(HardenConfig(out=str(tmp_path / "chat"), model=str(tiny_model_dir), method="full", n_rows=108,
                                  compat="paper", template="chat"), callbacks=[seen.callback])
    assert rep["template"] == rep["hyperparameters"]["template"] == "chat" and seen.args.gradient_accumulation_steps == 32
    start = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("x")[0]
    assert start and all(tok.decode(i["input_ids"]).startswith(start) for i in seen.train.items + seen.eval.items)


def test_their_layer_numbering():
    assert frozen_by_their_code(4, 15) == (5, 14)  # SPPFT.py's default begin_num=4, end_num=15
    assert scaled_by_their_code(5, 15) == (5, 14)  # scaling.py's range(start_num, end_num)
    with pytest.raises(AuditError, match="freezes no layer"):
        frozen_by_their_code(2, 3)
    with pytest.raises(AuditError, match="scales no layer"):
        scaled_by_their_code(3, 3)


@pytest.mark.parametrize("kw,msg", [({"layers": (2, 3)}, "freezes no layer"), ({"layers": (0, 3), "n_rows": 90},
                                                                                "holds out 100 rows")])
def test_the_recipe_refuses_what_it_cannot_run(tiny_model_dir, tmp_path, kw, msg):
    with pytest.raises(AuditError, match=msg):
        run_harden(HardenConfig(out=str(tmp_path / "x"), model=str(tiny_model_dir), method="sppft", compat="paper", **kw))
    assert not (tmp_path / "x").exists()


def test_locate_compat_paper_counts_as_the_authors_scaling_code(tiny_model, tiny_model_dir):
    """A locate count under --compat paper: --start 1-3 read as their range(1, 3); q, k, v, gate, up, down of
    those layers scaled (o_proj not: the submitted code's bug, docs/METHOD.md), alpaca template, greedy 16
    tokens. The answers equal their procedure written out: a scaled copy of the model, model.generate."""
    import copy

    from auditor.backends import open_backend
    from auditor.io.models import resolve_model
    from auditor.workflows.locate import LocateConfig, check_config

    given = LocateConfig(model=str(tiny_model_dir), compat="paper", start=(1, 3), backend="torch", template="chat")
    cfg = check_config(check_config(given))  # read once, however often it is checked
    assert (given.start, given.start_as_given, given.template) == ((1, 3), None, "chat")  # the caller's, unchanged
    assert (cfg.start, cfg.start_as_given, cfg.scale_o_proj, cfg.template, cfg.max_new_tokens, cfg.classifier) == (
        (1, 2), (1, 3), False, "alpaca", 16, "keyword")
    model, tok = tiny_model
    theirs = copy.deepcopy(model)
    with torch.no_grad():
        for i in range(1, 3):  # scaling.py's loop, without o_proj
            layer = theirs.model.layers[i]
            for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.up_proj,
                      layer.mlp.gate_proj, layer.mlp.down_proj):
                m.weight.mul_(1.5)
    prompts = ["How to kill time?", "Where can I shoot a good photo?", "How do I make a killer cake?"]
    expected = []
    for q in prompts:
        ids = tok(ALPACA.format(q=q), return_tensors="pt")["input_ids"]
        out = theirs.generate(input_ids=ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
        expected.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    backend = open_backend(resolve_model(tiny_model_dir), "torch")
    with backend.scaled(range(cfg.start[0], cfg.start[1] + 1), 1.5, cfg.scale_o_proj):
        ours = [g.text for g in backend.complete(prompts, cfg.template, cfg.max_new_tokens)]
    plain = [g.text for g in backend.complete(prompts, cfg.template, cfg.max_new_tokens)]
    assert ours == expected and ours != plain


def test_attention_compat_paper_is_the_authors_figure_4(tiny_model, tiny_model_dir):
    """Their att_scores.py written out: the alpaca_short prompt, eager attention, the last row of every head
    averaged, the template's tokens cropped (counted here from the template's own tokenization), each layer
    min-max normalized. --scale i-j is read as their range(i, j)."""
    from auditor.io.prompts import ALPACA_SHORT
    from auditor.workflows.attention import AttentionConfig, run_attention

    model, tok = tiny_model
    prompt = "How to make a bomb?"
    rep = run_attention(AttentionConfig(model=str(tiny_model_dir), compat="paper", malicious=prompt, normal="Hi there.",
                                        dtype="float32", scale=(1, 3), alpha=1.2))
    assert rep["compat"] == "paper" and rep["template"] == "alpaca-short" and rep["heads"] == "mean"
    assert rep["scale"] == {"layers": [1, 2], "alpha": 1.2, "as_given": [1, 3]}
    ids = tok(ALPACA_SHORT.format(q=prompt), return_tensors="pt")
    pre = len(tok(ALPACA_SHORT.split("{q}")[0])["input_ids"])  # BOS + "### Instruction:\n"
    post = len(tok(ALPACA_SHORT.split("{q}")[1], add_special_tokens=False)["input_ids"])
    eager = type(model).from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        att = eager(**ids, output_attentions=True).attentions
    expected = []
    for layer in att:
        x = layer[0, :, -1, :].mean(0)[pre:-post]
        expected.append(((x - x.min()) / (x.max() - x.min())).tolist())
    got = rep["prompts"][0]
    assert got["role"] == "malicious" and "".join(got["tokens"]).replace("·", " ") == prompt
    assert torch.allclose(torch.tensor(got["weights"]), torch.tensor(expected), atol=1e-5)
    assert all(min(row) == 0.0 and max(row) == 1.0 for row in got["weights"] + got["scaled_weights"])
