"""Every HF config field of each converted family, and what lmforge does with it.

A field is

- ``read``: translated into the :class:`~lmforge.config.ModelConfig` (a value with no lmforge
  equivalent, such as an unknown activation, is refused by the translation, naming the field);
- ``supported``: honoured for the values ``allowed`` lists (a tuple, or a test of the value and the
  whole config); any other value is refused with the field's name and value;
- ``refused``: a feature lmforge does not have; any value but the neutral ones in ``allowed`` is
  refused;
- ``ignored``: does not change what the converted model computes (metadata, generation defaults,
  output switches, initialisation, training-time-only regularisers lmforge does not implement).

:func:`check_hf_config` applies a family's table before any conversion; ``tests/test_hf_fields.py``
walks each transformers config class and fails on a field missing here, so a new transformers
release cannot slip a field past; docs/models.md holds :func:`fields_markdown`'s rendering.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class HFField:
    status: str  # read | supported | refused | ignored
    note: str = ""
    allowed: tuple | Callable[[Any, dict], bool] = ()

    def accepts(self, value: Any, hf: dict) -> bool:
        if self.status not in ("supported", "refused"):
            return True
        return self.allowed(value, hf) if callable(self.allowed) else value in self.allowed


def read(note: str = "") -> HFField:
    return HFField("read", note)


def ignored(note: str) -> HFField:
    return HFField("ignored", note)


def supported(note: str, allowed) -> HFField:
    return HFField("supported", note, allowed)


def refused(note: str) -> HFField:
    return HFField("refused", note, lambda value, hf: not value)  # unset, False, 0, empty


def _equals(other: str) -> Callable[[Any, dict], bool]:
    return lambda value, hf: value is None or value == hf.get(other)


_GENERATION = ignored("a generation default, not part of the model")

# Fields of every HF config (PretrainedConfig), and older ones that saved configs still carry.
COMMON: dict[str, HFField] = {
    "model_type": read("picks the family"),
    "architectures": ignored("the heads present are read from the weights"),
    "_name_or_path": ignored("metadata"),
    "transformers_version": ignored("metadata"),
    "_commit_hash": ignored("metadata"),
    "dtype": ignored("weights are converted to fp32"),
    "torch_dtype": ignored("weights are converted to fp32"),
    "id2label": ignored("labels of a classification head, which is not converted"),
    "label2id": ignored("labels of a classification head, which is not converted"),
    "num_labels": ignored("size of a classification head, which is not converted"),
    "problem_type": ignored("loss of a classification head, which is not converted"),
    "finetuning_task": ignored("metadata"),
    "tokenizer_class": ignored("metadata"),
    "prefix": ignored("a prompt prefix for pipelines"),
    "task_specific_params": ignored("pipeline settings"),
    "is_encoder_decoder": ignored("implied by the family"),
    "output_attentions": ignored("an output switch"),
    "output_hidden_states": ignored("an output switch"),
    "return_dict": ignored("an output switch"),
    "use_return_dict": ignored("an output switch"),
    "output_past": ignored("an output switch"),
    "use_cache": ignored("an output switch; lmforge's KV cache is chosen per call"),
    "torchscript": ignored("an export switch"),
    "use_bfloat16": ignored("weights are converted to fp32"),
    "tf_legacy_loss": ignored("a TensorFlow loss switch"),
    "gradient_checkpointing": ignored("a memory switch (lmforge: train.activation_checkpointing)"),
    "chunk_size_feed_forward": ignored("computes the FFN in chunks: the same numbers"),
    "sep_token_id": ignored("a tokenizer id the model does not use"),
    "pruned_heads": refused("pruned attention heads change the layer shapes"),
    "tie_encoder_decoder": refused("tying encoder and decoder layers"),
    "add_cross_attention": refused("cross-attention in a single-stack model"),
    "cross_attention_hidden_size": ignored("used only with add_cross_attention"),
    "lmforge_text_start_id": read("lmforge's own key: text_start_id"),
    **{
        k: _GENERATION
        for k in (
            "max_length",
            "min_length",
            "do_sample",
            "early_stopping",
            "num_beams",
            "num_beam_groups",
            "diversity_penalty",
            "temperature",
            "top_k",
            "top_p",
            "typical_p",
            "repetition_penalty",
            "length_penalty",
            "no_repeat_ngram_size",
            "encoder_no_repeat_ngram_size",
            "bad_words_ids",
            "num_return_sequences",
            "output_scores",
            "return_dict_in_generate",
            "forced_bos_token_id",
            "forced_eos_token_id",
            "remove_invalid_values",
            "exponential_decay_length_penalty",
            "suppress_tokens",
            "begin_suppress_tokens",
            "max_new_tokens",
            "decoder_start_token_id",
        )
    },
}

_IDS = {"bos_token_id": read("bos_id"), "eos_token_id": read("eos_id"), "pad_token_id": read("pad_id")}
_INIT = ignored("initialisation only")

GPT2: dict[str, HFField] = {
    **_IDS,
    "vocab_size": read("vocab_size"),
    "n_positions": read("max_positions"),
    "n_embd": read("d_model"),
    "n_layer": read("n_layer"),
    "n_head": read("n_head"),
    "n_inner": read("d_ff (None: 4 x n_embd)"),
    "activation_function": read(
        "activation: gelu_new / gelu_pytorch_tanh / gelu_fast -> gelu_tanh, gelu, relu, silu / swish; others refused"
    ),
    "resid_pdrop": read("dropout"),
    "embd_pdrop": ignored("training only: lmforge's one dropout rate is resid_pdrop"),
    "attn_pdrop": read("attention_dropout"),
    "layer_norm_epsilon": read("norm_eps"),
    "initializer_range": _INIT,
    "scale_attn_weights": read("scale_attention (False: unscaled Q K^T)"),
    "scale_attn_by_inverse_layer_idx": refused("scores scaled by 1 / (layer + 1)"),
    "reorder_and_upcast_attn": ignored("computes the scores in fp32: the same numbers in fp32"),
    "tie_word_embeddings": read("tie_embeddings"),
    **{
        k: ignored("the multiple-choice head of GPT2DoubleHeadsModel, not converted")
        for k in (
            "summary_type",
            "summary_use_proj",
            "summary_activation",
            "summary_proj_to_labels",
            "summary_first_dropout",
        )
    },
}

_LLAMA_ACTS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "relu")

LLAMA: dict[str, HFField] = {
    **_IDS,
    "vocab_size": read("vocab_size"),
    "hidden_size": read("d_model"),
    "intermediate_size": read("d_ff"),
    "num_hidden_layers": read("n_layer"),
    "num_attention_heads": read("n_head"),
    "num_key_value_heads": read("n_kv_head"),
    "hidden_act": read(
        "the gate of the gated FFN: silu / swish -> swiglu, gelu -> geglu, gelu_pytorch_tanh / "
        "gelu_new / gelu_fast -> geglu_tanh, relu -> reglu; others refused"
    ),
    "max_position_embeddings": read("max_positions"),
    "rms_norm_eps": read("norm_eps"),
    "rope_parameters": supported(
        "rope_type 'default' only (its rope_theta is read into rope_base); scaled RoPE is refused",
        lambda v, hf: v is None or v.get("rope_type", "default") == "default",
    ),
    "rope_theta": read("rope_base (older configs)"),
    "rope_scaling": refused("scaled RoPE (older configs)"),
    "attention_bias": read("bias"),
    "mlp_bias": supported("equal to attention_bias (lmforge has one bias switch)", _equals("attention_bias")),
    "attention_dropout": read("attention_dropout"),
    "head_dim": supported(
        "hidden_size / num_attention_heads only",
        lambda v, hf: v is None or v * hf.get("num_attention_heads", 0) == hf.get("hidden_size"),
    ),
    "pretraining_tp": ignored("splits the projections into slices: the same numbers"),
    "initializer_range": _INIT,
    "tie_word_embeddings": read("tie_embeddings"),
}

BERT: dict[str, HFField] = {
    "pad_token_id": read("pad_id"),
    "bos_token_id": ignored("BERT uses no BOS"),
    "eos_token_id": ignored("BERT uses no EOS"),
    "vocab_size": read("vocab_size"),
    "hidden_size": read("d_model"),
    "num_hidden_layers": read("n_layer"),
    "num_attention_heads": read("n_head"),
    "intermediate_size": read("d_ff"),
    "hidden_act": read(
        "activation: gelu, gelu_new / gelu_pytorch_tanh / gelu_fast -> gelu_tanh, relu, silu / swish; others refused"
    ),
    "hidden_dropout_prob": read("dropout"),
    "attention_probs_dropout_prob": read("attention_dropout"),
    "max_position_embeddings": read("max_positions"),
    "type_vocab_size": read("type_vocab_size"),
    "layer_norm_eps": read("norm_eps"),
    "position_embedding_type": supported("'absolute' only (relative positions are refused)", (None, "absolute")),
    "classifier_dropout": ignored("the classification head, which is not converted"),
    "is_decoder": refused("a causal BERT (BertLMHeadModel)"),
    "initializer_range": _INIT,
    "tie_word_embeddings": read("tie_embeddings (False: the MLM decoder has its own matrix)"),
}

_SEQ2SEQ: dict[str, HFField] = {
    **_IDS,
    "decoder_start_token_id": read("decoder_start_id"),
    "vocab_size": read("vocab_size"),
    "max_position_embeddings": read("max_positions"),
    "d_model": read("d_model"),
    "encoder_layers": read("n_encoder_layer"),
    "decoder_layers": read("n_decoder_layer"),
    "encoder_attention_heads": read("n_head"),
    "decoder_attention_heads": supported("equal to encoder_attention_heads", _equals("encoder_attention_heads")),
    "encoder_ffn_dim": read("d_ff"),
    "decoder_ffn_dim": supported("equal to encoder_ffn_dim", _equals("encoder_ffn_dim")),
    "activation_function": read(
        "activation: gelu, gelu_new / gelu_pytorch_tanh / gelu_fast -> gelu_tanh, relu, silu / swish; others refused"
    ),
    "dropout": read("dropout"),
    "attention_dropout": read("attention_dropout"),
    "activation_dropout": ignored("training only: lmforge has no dropout inside the FFN"),
    "encoder_layerdrop": ignored("training only: lmforge does not skip layers"),
    "decoder_layerdrop": ignored("training only: lmforge does not skip layers"),
    "scale_embedding": read("scale_embeddings"),
    "init_std": _INIT,
    "classifier_dropout": ignored("the classification head, which is not converted"),
    "classif_dropout": ignored("the classification head, which is not converted"),
    "is_decoder": refused("a decoder-only model (BartForCausalLM)"),
    "tie_word_embeddings": read(
        "False: encoder, decoder and LM head each have their own matrix (share_embeddings=false, tie_embeddings=false)"
    ),
    # older (mBART-style) switches
    "normalize_before": refused("pre-norm layers (mBART)"),
    "add_final_layer_norm": refused("a final layer norm (mBART)"),
    "static_position_embeddings": refused("sinusoidal positions in a BART config"),
    "add_bias_logits": refused("a bias on the logits other than final_logits_bias"),
    "force_bos_token_to_be_generated": ignored("a generation default"),
}

BART: dict[str, HFField] = {
    **_SEQ2SEQ,
    "normalize_embedding": supported("True only (BART normalises its embeddings)", (None, True)),
    "extra_pos_embeddings": supported("2 only (BART's offset of its position table)", (None, 2)),
}

MARIAN: dict[str, HFField] = {
    **_SEQ2SEQ,
    "decoder_vocab_size": supported("equal to vocab_size (one vocabulary for both sides)", _equals("vocab_size")),
    "share_encoder_decoder_embeddings": read("share_embeddings"),
    "normalize_embedding": refused("an embedding norm in Marian"),
    "extra_pos_embeddings": ignored("Marian's sinusoidal positions have no offset"),
}

_OTHER_HEADS = ignored("the sequence-summary / SQuAD heads of other XLNet models, not converted")
_NO_MEMORY = ignored(
    "how much memory (mems) a call keeps: lmforge takes mems= / mem_len= per call; logits do not change"
)

XLNET: dict[str, HFField] = {
    **_IDS,
    "vocab_size": read("vocab_size"),
    "d_model": read("d_model"),
    "n_layer": read("n_layer"),
    "n_head": read("n_head"),
    "d_inner": read("d_ff"),
    "d_head": supported(
        "d_model / n_head only", lambda v, hf: v is None or v * hf.get("n_head", 0) == hf.get("d_model")
    ),
    "ff_activation": read(
        "activation: gelu, gelu_new / gelu_pytorch_tanh / gelu_fast -> gelu_tanh, relu, silu / swish; others refused"
    ),
    "attn_type": supported("'bi' only (XLNet; 'uni' is Transformer-XL's causal mask)", (None, "bi")),
    "bi_data": refused("a batch split into forward and backward relative positions"),
    "clamp_len": supported("-1 or 0 only (relative distances are not clamped)", lambda v, hf: v is None or v <= 0),
    "same_length": ignored("shapes the 'uni' mask only"),
    "layer_norm_eps": read("norm_eps"),
    "dropout": read("dropout and attention_dropout (XLNet's one rate)"),
    "mem_len": _NO_MEMORY,
    "reuse_len": _NO_MEMORY,
    "use_mems_eval": _NO_MEMORY,
    "use_mems_train": _NO_MEMORY,
    "initializer_range": _INIT,
    "tie_word_embeddings": read("tie_embeddings (False: lm_loss has its own matrix)"),
    "lmforge_max_positions": read("lmforge's own key: max_positions (the context it was trained at; else 512)"),
    **{
        k: _OTHER_HEADS
        for k in (
            "summary_type",
            "summary_use_proj",
            "summary_activation",
            "summary_last_dropout",
            "start_n_top",
            "end_n_top",
        )
    },
}

TABLES: dict[str, dict[str, HFField]] = {
    "gpt2": GPT2,
    "llama": LLAMA,
    "bert": BERT,
    "bart": BART,
    "marian": MARIAN,
    "xlnet": XLNET,
}

# transformers' attribute_map of each config class: alias -> the field it stands for.
ALIASES: dict[str, dict[str, str]] = {
    "gpt2": {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    },
    "llama": {},
    "bert": {},
    "bart": {
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    },
    "marian": {
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    },
    "xlnet": {
        "n_token": "vocab_size",
        "hidden_size": "d_model",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    },
}


def field_status(family: str, name: str) -> HFField | None:
    """The table entry of one field (an alias counts as the field it stands for)."""
    name = ALIASES[family].get(name, name)
    return TABLES[family].get(name) or COMMON.get(name)


def check_hf_config(hf: dict[str, Any], family: str) -> dict[str, Any]:
    """The config with aliases resolved, after refusing every field whose value lmforge cannot
    convert faithfully (one :class:`ConfigError` naming the field and its value). A field that is
    in no table is ignored with a warning."""
    out = dict(hf)
    for alias, name in ALIASES[family].items():
        if alias in out:
            value = out.pop(alias)
            out.setdefault(name, value)
    for name, value in out.items():
        spec = field_status(family, name)
        if spec is None:
            warnings.warn(f"HF {family} config field {name}={value!r} is not in lmforge's table; ignored", stacklevel=3)
        elif not spec.accepts(value, out):
            raise ConfigError(
                f"{name}: HF {family} config has {name}={value!r}, which lmforge does not support ({spec.note})"
            )
    return out


def fields_markdown() -> str:
    """The tables of docs/models.md: the fields every config has, then one table per family."""
    titles = {
        "common": "every family",
        "gpt2": "GPT-2",
        "llama": "Llama",
        "bert": "BERT",
        "bart": "BART",
        "marian": "Marian",
        "xlnet": "XLNet",
    }
    parts = []
    for key, table in (("common", COMMON), *TABLES.items()):
        aliases = {} if key == "common" else {v: k for k, v in ALIASES[key].items()}
        rows = [f"#### HF config fields: {titles[key]}", "", "| field | lmforge | what it does |", "|---|---|---|"]
        for name, spec in sorted(table.items()):
            shown = f"`{name}`" + (f" (alias `{aliases[name]}`)" if name in aliases else "")
            rows.append(f"| {shown} | {spec.status} | {spec.note} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"
