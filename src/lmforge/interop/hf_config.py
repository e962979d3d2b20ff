"""Config translation between HF ``config.json`` dicts and :class:`~lmforge.config.ModelConfig`,
for the families :mod:`lmforge.interop.hf` converts, and the family of an lmforge config."""

from __future__ import annotations

from typing import Any

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.interop import hf_xlnet
from lmforge.interop.hf_fields import TABLES, check_hf_config

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
