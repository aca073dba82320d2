"""One definition of a safety layer's weights: scaling (locate), SPPFT/freeze-block freezing, LoRA targets and
NFFT's candidate neurons select the same tensors, on GPT-2 (Conv1D, fused qkv) and the ten decoder families of
tests/families.py (Phi-3's fused qkv and gate_up among them)."""

import functools

import families
import pytest
import torch

from auditor.errors import AuditError
from auditor.training.methods import METHODS, MethodContext
from auditor.training.methods.nfft import freeze_safety_neurons
from auditor.weights.layers import block_parameters, decoder_layers, linear_maps
from auditor.weights.scaling import scalable_parameters, scaled


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=5,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=5, n_head=4, n_positions=64))


# (builder, block-relative names of the maps one layer must have, the attention output projection)
ARCHS = {
    **{f: (functools.partial(families.build, f), families.layer_map_names(f), "self_attn.o_proj")
       for f in families.FAMILIES},
    "gpt2": (gpt2, {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}, "attn.c_proj"),
}
LAYERS = range(1, 3)


def _context(model, layers=(1, 2)):
    return MethodContext(model, None, None, layers, len(decoder_layers(model)), "alpaca", 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_selector_finds_every_linear_map_and_nothing_else(arch):
    build, names, o_proj = ARCHS[arch]
    model = build()
    maps = linear_maps(model, LAYERS)
    prefix = {m.layer: m.name.rsplit(".", len(next(iter(names)).split(".")))[0] for m in maps}
    rel = {(m.layer, m.name[len(prefix[m.layer]) + 1:]) for m in maps}
    assert rel == {(k, n) for k in LAYERS for n in names}
    assert {m.name for m in maps if m.is_o_proj} == {f"{prefix[k]}.{o_proj}" for k in LAYERS}
    assert not any("norm" in m.name or "embed" in m.name or "lm_head" in m.name or "wte" in m.name for m in maps)
    assert {m.out_axis for m in maps} == ({1} if arch == "gpt2" else {0})  # Conv1D stores [in, out]


@pytest.mark.parametrize("arch", ARCHS)
def test_scaling_freezing_lora_and_nfft_select_the_same_tensors(arch):
    model = ARCHS[arch][0]()
    selected = {f"{m.name}.weight" for m in linear_maps(model, LAYERS)}
    params = dict(model.named_parameters())

    # locate: exactly these weights are scaled, and nothing else moves
    assert {n for n, _ in scalable_parameters(model, LAYERS)} == selected
    before = {n: p.detach().clone() for n, p in params.items()}
    with scaled(model, LAYERS, 1.5):
        moved = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert moved == selected and all(torch.equal(p, before[n]) for n, p in params.items())

    # sppft / freeze-block: the same modules (their biases too), and nothing else, frozen
    for method in ("sppft", "freeze-block"):
        m = ARCHS[arch][0]()
        METHODS[method].freeze(_context(m))
        frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
        assert {n for n in frozen if n.endswith(".weight")} == selected
        assert frozen == set(block_parameters(m, LAYERS))

    # LoRA: every selected map outside the frozen range, and only those
    targets = set(METHODS["sppft"].lora_targets(_context(model)))
    assert targets == {m.name for m in linear_maps(model) if m.layer not in LAYERS}
    assert set(METHODS["full"].lora_targets(_context(model, None))) == {m.name for m in linear_maps(model)}

    # nfft: its candidate neurons are output neurons of the selected maps (all layers)
    batches = [{"input_ids": torch.randint(0, 64, (2, 8)), "labels": torch.randint(0, 64, (2, 8))}]
    rows = freeze_safety_neurons(model, 200, batches, batches)["rows"]
    assert rows and set(rows) <= {f"{m.name}.weight" for m in linear_maps(model)}


def test_nfft_freezes_conv1d_output_columns():
    """GPT-2's Conv1D weight is [in, out]: a frozen neuron is a column, and its gradient is zeroed."""
    model = gpt2()
    batches = [{"input_ids": torch.randint(0, 64, (2, 8)), "labels": torch.randint(0, 64, (2, 8))}]
    rows = freeze_safety_neurons(model, 500, batches, batches)["rows"]
    name, neurons = next(iter(rows.items()))
    w = dict(model.named_parameters())[name]
    model.zero_grad()
    model(**batches[0]).loss.backward()
    assert torch.all(w.grad[:, neurons] == 0)
    assert w.grad.abs().sum() > 0  # the other columns still learn


def test_selector_rejects_layers_outside_the_model():
    with pytest.raises(AuditError, match="outside the model"):
        linear_maps(llama(), [5])


def test_a_family_without_decoder_blocks_is_refused_naming_it():
    """A model whose blocks cannot be found (a state-space model, say) is refused in one line naming its family,
    before anything is scaled or frozen."""
    from types import SimpleNamespace

    class Mystery(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(model_type="mamba", num_hidden_layers=4)
            self.mixer = torch.nn.Linear(4, 4)

    with pytest.raises(AuditError, match=r"decoder layers of this mamba model .* not supported"):
        linear_maps(Mystery(), [1])


MOE = {"mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 2, "num_experts_per_tok": 1}),
       "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_experts": 2, "num_experts_per_tok": 1,
                                                               "moe_intermediate_size": 16, "head_dim": 8}),
       "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", {"num_local_experts": 2, "num_experts_per_tok": 1, "head_dim": 8})}


@pytest.mark.parametrize("family", sorted(MOE))
def test_a_mixture_of_experts_is_refused_rather_than_half_scaled(family, tmp_path, monkeypatch):
    """transformers 5 keeps the experts as stacked 3-D parameters, not linear layers: scaling or freezing only
    the attention of a layer would be a silent half-run. Refused in one line naming the family and what would be
    missed, by locate before its scan; the states are still read (scan needs no linear maps)."""
    import transformers
    from click.testing import CliRunner
    from conftest import make_tokenizer

    from auditor.backends import open_backend
    from auditor.cli import main
    from auditor.io.models import resolve_model

    config, model_class, extra = MOE[family]
    tok = make_tokenizer()
    cfg = getattr(transformers, config)(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                        pad_token_id=2, **extra)
    model = getattr(transformers, model_class)(cfg)
    with pytest.raises(AuditError) as e:
        linear_maps(model, [1])
    msg = str(e.value)
    assert f"this {family} model keeps weights outside linear layers (a mixture of experts)" in msg
    assert "mlp.experts.gate_up_proj" in msg and "\n" not in msg
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert tuple(open_backend(resolve_model(tmp_path), "torch").states_for_ids([[1, 5, 6], [1, 7]]).shape) == (3, 2, 32)
    scans = []
    monkeypatch.setattr("auditor.workflows.locate.run_scan", lambda *a, **k: scans.append(a))
    r = CliRunner().invoke(main, ["locate", str(tmp_path), "--backend", "torch", "--limit", "2", "-q"])
    assert r.exit_code == 2 and "keeps weights outside linear layers" in r.output and not scans
    assert "Traceback" not in r.output
