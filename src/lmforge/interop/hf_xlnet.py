"""HF ``XLNetLMHeadModel`` <-> :class:`~lmforge.models.xlnet.XLNetLM`: the config translation and
the weight table that :mod:`lmforge.interop.hf` applies in both directions.

HF keeps each attention projection as one (C, H, D) tensor used in einsums; lmforge as a linear
layer: q, k, v and r read x (C) into H*D (op ``heads_in``: weight = tensor.reshape(C, H*D).T), o
writes H*D back into C (``heads_out``: weight = tensor.reshape(C, H*D)). Every other tensor is
copied under the same name.
"""

from __future__ import annotations

from typing import Any

from lmforge.config import XLNET_RECIPE, ModelConfig

Rule = tuple[str, list[str], str, list[int]]
# the HF key lmforge writes for the context it was trained at (HF XLNet has no such field)
MAX_POSITIONS_KEY = "lmforge_max_positions"
DEFAULT_MAX_POSITIONS = 512  # XLNet's pretraining length


def xlnet_rules(cfg: ModelConfig) -> list[Rule]:
    heads = [cfg.n_head, cfg.head_dim]
    r: list[Rule] = [
        ("transformer.word_embedding.weight", ["transformer.word_embedding.weight"], "copy", []),
        ("transformer.mask_emb", ["transformer.mask_emb"], "copy", []),
        ("lm_loss.bias", ["lm_loss.bias"], "copy", []),
    ]
    if not cfg.tie_embeddings:
        r.append(("lm_loss.weight", ["lm_loss.weight"], "copy", []))
    for i in range(cfg.n_layer):
        a, f = f"transformer.layer.{i}.rel_attn", f"transformer.layer.{i}.ff"
        r += [(f"{a}.{p}.weight", [f"{a}.{p}"], "heads_in", heads) for p in "qkvr"]
        r.append((f"{a}.o.weight", [f"{a}.o"], "heads_out", heads))
        r += [(f"{a}.{p}", [f"{a}.{p}"], "copy", []) for p in ("r_w_bias", "r_r_bias", "r_s_bias", "seg_embed")]
        for name in (f"{a}.layer_norm", f"{f}.layer_norm", f"{f}.layer_1", f"{f}.layer_2"):
            r += [(f"{name}.{p}", [f"{name}.{p}"], "copy", []) for p in ("weight", "bias")]
    return r


def tied_copies(cfg: ModelConfig) -> dict[str, str]:
    return {"lm_loss.weight": "transformer.word_embedding.weight"} if cfg.tie_embeddings else {}


def config_from_hf(hf: dict[str, Any], activation: str, ids: dict[str, int]) -> dict[str, Any]:
    """ModelConfig fields of a checked HF XLNet config (``activation`` already translated)."""
    dropout = hf.get("dropout", 0.1)
    return dict(
        XLNET_RECIPE,
        vocab_size=hf.get("vocab_size", 32000),  # missing fields: XLNetConfig's defaults (xlnet-large)
        max_positions=hf.get(MAX_POSITIONS_KEY, DEFAULT_MAX_POSITIONS),
        n_layer=hf.get("n_layer", 24),
        d_model=hf.get("d_model", 1024),
        n_head=hf.get("n_head", 16),
        d_ff=hf.get("d_inner", 4096),
        activation=activation,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=dropout,
        attention_dropout=dropout,
        **ids,
    )


def config_to_hf(cfg: ModelConfig, activation: str, ids: dict[str, int]) -> dict[str, Any]:
    return dict(
        model_type="xlnet",
        architectures=["XLNetLMHeadModel"],
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        d_head=cfg.head_dim,
        d_inner=cfg.ffn_dim,
        ff_activation=activation,
        attn_type="bi",
        layer_norm_eps=cfg.norm_eps,
        dropout=cfg.dropout,
        mem_len=None,
        use_mems_eval=False,
        tie_word_embeddings=cfg.tie_embeddings,
        **{MAX_POSITIONS_KEY: cfg.max_positions},
        **ids,
    )


def hf_needs(cfg: ModelConfig) -> list[tuple[bool, str]]:
    """What an lmforge XLNet must be for HF's XLNetLMHeadModel to hold it: (condition, what)."""
    return [
        (cfg.bias and cfg.lm_head_bias, "HF XLNet's feed-forward layers and lm_loss have biases (bias, lm_head_bias)"),
        (cfg.dropout == cfg.attention_dropout, "HF XLNet has one dropout rate (dropout == attention_dropout)"),
    ]
