"""What "a safety layer's weights" means, defined once (docs/METHOD.md §1.2-1.3).

The linear maps of a decoder layer: attention q, k, v, o (or a fused qkv), MLP gate, up, down (or a fused
gate_up), as torch Linear or GPT-2's Conv1D, and nothing else: norms, embeddings and the lm_head are never
selected. `locate` scales exactly these weights, SPPFT and freeze-block freeze exactly these modules, LoRA
adapts exactly these modules outside the frozen block and NFFT ranks the output neurons of exactly these
maps, so the layers locate finds are the layers harden protects, on any architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..errors import AuditError

# block-relative module names of the attention output projection (the authors' code never scaled it)
O_PROJ_NAMES = ("o_proj", "out_proj", "attn.c_proj", "attention.dense", "self_attention.dense")


@dataclass(frozen=True)
class LinearMap:
    layer: int
    name: str  # full module name in the model, e.g. "model.layers.3.self_attn.q_proj"
    module: torch.nn.Module
    out_axis: int  # the weight axis that indexes output neurons: 0 for Linear, 1 for Conv1D ([in, out])
    is_o_proj: bool

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.module.weight


def _linear_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (torch.nn.Linear,), ()
    return (torch.nn.Linear,), (Conv1D,)


def text_config(model: torch.nn.Module):
    """The config that describes the decoder (a multimodal model's text part; the config itself otherwise)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def _family(model: torch.nn.Module) -> str:
    """What refusals call the model: its config's model_type, else its class."""
    return getattr(text_config(model), "model_type", None) or type(model).__name__


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks: the ModuleList whose length is the configured number of hidden layers."""
    cfg = text_config(model)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise AuditError(f"cannot find the decoder layers of this {_family(model)} model (no list of {n} blocks): this "
                     "family is not supported")


def check_range(layers: Iterable[int], n_layers: int) -> list[int]:
    layers = sorted(set(int(k) for k in layers))
    if not layers:
        raise AuditError("no layers selected")
    bad = [k for k in layers if not 0 <= k < n_layers]
    if bad:
        raise AuditError(f"layer {bad[0]} is outside the model (layers 0..{n_layers - 1})")
    return layers


def linear_maps(model: torch.nn.Module, layers: Iterable[int] | None = None) -> list[LinearMap]:
    """Every linear map of the chosen decoder layers (all layers when `layers` is None), in model order."""
    blocks = decoder_layers(model)
    chosen = range(len(blocks)) if layers is None else check_range(layers, len(blocks))
    linear, conv1d = _linear_types()
    full_names = {id(m): n for n, m in model.named_modules()}
    out = []
    for k in chosen:
        found = []
        for rel, mod in blocks[k].named_modules():
            if isinstance(mod, linear + conv1d):
                found.append(LinearMap(k, full_names[id(mod)], mod, 1 if isinstance(mod, conv1d) else 0,
                                       any(rel == s or rel.endswith("." + s) for s in O_PROJ_NAMES)))
        _check_covered(model, blocks[k], found)
        out += found
    return out


def _check_covered(model: torch.nn.Module, block: torch.nn.Module, maps: list[LinearMap]) -> None:
    """Scaling, freezing and neuron ranking act on linear maps. A block that keeps matrices elsewhere (a
    mixture of experts' stacked expert weights and router, in transformers 5) would be half scaled and half
    frozen, so it is refused, naming the family and what would be missed."""
    covered = {id(p) for m in maps for p in m.module.parameters()}
    missed = [n for n, p in block.named_parameters() if p.dim() >= 2 and id(p) not in covered]
    if missed:
        kind = " (a mixture of experts)" if any("expert" in n for n in missed) else ""
        raise AuditError(f"this {_family(model)} model keeps weights outside linear layers{kind}, such as "
                         f"{', '.join(missed[:3])}: scaling or freezing its layers would miss them, so this family "
                         "is not supported by locate, harden or nfft (scan and attention work)")


def block_parameters(model: torch.nn.Module, layers: Iterable[int]) -> dict[str, torch.nn.Parameter]:
    """Every parameter (weights and biases) of the chosen layers' linear maps, by full name: what SPPFT
    and freeze-block freeze."""
    return {f"{m.name}.{pname}": p for m in linear_maps(model, layers) for pname, p in m.module.named_parameters()}
