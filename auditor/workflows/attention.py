"""`attention`: the paper's Figure 4 — per layer, where the final token of a malicious and of a normal
prompt attends, side by side, with the safety layers marked; optionally again with a layer range scaled
by α, to show what the scaling that locate uses does to the pattern.

Attention weights exist only where a backend forms them: torch, with eager attention for this one call.
llama.cpp fuses the softmax into its kernels, so the llama backend declares no attention capability and a
GGUF is opened by torch (dequantized) unless `--backend llama` is asked for, which is refused in one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..backends import ATTENTION
from ..core.attention import paper_view, reduce_heads, role_shares, token_view
from ..errors import AuditError
from ..io.config import setting
from ..io.prompts import check_template, load_prompts
from ..io.reports import Report, report_range
from ..weights.scaling import check_alpha
from ..training.paper import scaled_by_their_code
from .options import ModelOptions, Target
from .reporting import Reporter, Silent


@dataclass
class AttentionConfig(ModelOptions):
    malicious: str | None = setting(None, "The malicious prompt (default: the first of the bundled malicious set).",
                                    cli=False)
    normal: str | None = setting(None, "The normal prompt (default: the first of the bundled normal set).", cli=False)
    layers: tuple[int, int] | None = setting(None, "Only layers i-j (default: all).", metavar="i-j", parse="range")
    heads: str = setting("mean", "Combine heads by mean | max, or show one head N.", metavar="mean|max|N")
    from_report: str | None = setting(None, "Mark the safety layers of a locate (safety_layers) or scan (initial range) report.",
                                      metavar="LOCATE.json|SCAN.json")
    scale: tuple[int, int] | None = setting(None, "Also show the maps with layers i-j scaled by --alpha (as locate does).",
                                            metavar="i-j", parse="range")
    alpha: float | None = setting(None, "Scaling factor for --scale.")
    compat: str | None = setting(None, "paper: the authors' Figure 4 (their att_scores.py): alpaca-short template, the "
                                 "final token's attention averaged over heads, template tokens cropped, each layer "
                                 "min-max normalized; --scale i-j read as their range(i, j).", choices=("paper",))


@dataclass
class PromptAttention:
    role: str  # malicious | normal
    prompt: str
    tokens: list[str]
    token_roles: list[str]
    weights: list[list[float]]  # [layers shown][tokens], heads combined
    shares: dict[str, list[float]]  # role -> per layer share of attention
    scaled_weights: list[list[float]] | None = None
    scaled_shares: dict[str, list[float]] | None = None


@dataclass
class AttentionReport(Report):
    template: str
    heads: str
    n_layers: int
    n_heads: int
    layers: list[int]  # the layers shown (rows of every map)
    safety_layers: list[int] | None
    safety_layers_from: str | None
    scale: dict | None
    prompts: list[PromptAttention]
    seconds: float
    compat: str | None = None  # paper: weights cropped to the prompt's tokens, each layer min-max normalized


def paper_config(cfg: AttentionConfig) -> AttentionConfig:
    """--compat paper: the authors' template and head average; --scale read as their scaling loop reads it. A new
    config: the caller's is left as given (run twice, it is read once each time)."""
    if cfg.compat is None:
        return cfg
    if cfg.compat != "paper":
        raise AuditError(f"unknown compat mode '{cfg.compat}' (choose paper)")
    return replace(cfg, template="alpaca-short", heads="mean", scale=scaled_by_their_code(*cfg.scale) if cfg.scale else None)


def _check(cfg: AttentionConfig) -> tuple[int, int] | None:
    """Every option checked before the model loads; returns the marked safety layers."""
    check_template(cfg.template)
    if cfg.heads not in ("mean", "max") and not str(cfg.heads).isdigit():
        raise AuditError(f"--heads '{cfg.heads}': expected mean, max or a head number")
    if (cfg.scale is None) != (cfg.alpha is None):
        raise AuditError("--scale i-j and --alpha A go together")
    if cfg.alpha is not None:
        check_alpha(cfg.alpha)
    for what, text in (("malicious", cfg.malicious), ("normal", cfg.normal)):
        if text is not None and not text.strip():
            raise AuditError(f"the {what} prompt is empty")
    return report_range(cfg.from_report) if cfg.from_report else None


def _inside(rng, n_layers: int, what: str) -> None:
    if rng and not 0 <= rng[0] <= rng[1] < n_layers:
        raise AuditError(f"{what} {rng[0]}-{rng[1]} are outside the model (layers 0..{n_layers - 1})")


def run_attention(cfg: AttentionConfig, reporter: Reporter | None = None) -> dict:
    reporter = reporter or Silent()
    given_scale = cfg.scale
    cfg = paper_config(cfg)
    paper = cfg.compat == "paper"
    marked = _check(cfg)
    target = Target.resolve(cfg, (ATTENTION,))
    t0 = time.perf_counter()
    with target:
        backend = target.backend(reporter)
        K = backend.n_layers
        for rng, what in ((cfg.layers, "--layers"), (cfg.scale, "--scale layers"), (marked, "the report's safety layers")):
            _inside(rng, K, what)
        shown = list(range(cfg.layers[0], cfg.layers[1] + 1)) if cfg.layers else list(range(K))
        pair = (("malicious", cfg.malicious or load_prompts("malicious").prompts[0]),
                ("normal", cfg.normal or load_prompts("normal").prompts[0]))
        reporter.start("attention maps", len(pair) * (2 if cfg.scale else 1))
        results, n_heads = [], 0
        for role, prompt in pair:
            att = backend.final_token_attention(prompt, cfg.template)
            n_heads = att.weights.shape[1]
            view = token_view(att, prompt, lambda i: backend.tokenizer.convert_ids_to_tokens(i))
            w = reduce_heads(att.weights, cfg.heads)[shown]
            shares = role_shares(w, view.roles)  # of the whole prompt, template included, in either mode
            span, shown_w = paper_view(w, view.roles) if paper else ((0, len(view.roles)), w)
            item = PromptAttention(role, prompt, view.labels[span[0]:span[1]], view.roles[span[0]:span[1]],
                                   _rounded(shown_w), shares)
            reporter.advance(1)
            if cfg.scale:
                with backend.scaled(range(cfg.scale[0], cfg.scale[1] + 1), cfg.alpha):
                    ws = reduce_heads(backend.final_token_attention(prompt, cfg.template).weights, cfg.heads)[shown]
                item.scaled_weights = _rounded(paper_view(ws, view.roles)[1] if paper else ws)
                item.scaled_shares = role_shares(ws, view.roles)
                reporter.advance(1)
            results.append(item)
    scale = {"layers": list(cfg.scale), "alpha": cfg.alpha} if cfg.scale else None
    if scale and paper:
        scale["as_given"] = list(given_scale)
    report = AttentionReport(target.header("attention"), cfg.template,
                             cfg.heads, K, n_heads, shown, list(marked) if marked else None, cfg.from_report, scale,
                             results, round(time.perf_counter() - t0, 2), "paper" if paper else None)
    return report.to_dict()


def _rounded(w) -> list[list[float]]:
    return [[round(float(x), 6) for x in row] for row in w]
