"""The HF config field tables: complete for each family, rendered in docs/models.md, enforced on
import; and the settings that used to convert into a different model silently (unscaled GPT-2
attention, other LLaMA activations, untied BERT / BART / Marian heads, unshared Marian
embeddings) now convert with HF's logits, or are refused with the field's name and value."""

import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import CheckpointError, ConfigError  # noqa: E402
from lmforge.interop import from_hf, to_hf  # noqa: E402
from lmforge.interop.hf_fields import ALIASES, TABLES, field_status, fields_markdown  # noqa: E402

TOL = 1e-4
CONFIGS = {
    "gpt2": transformers.GPT2Config,
    "llama": transformers.LlamaConfig,
    "bert": transformers.BertConfig,
    "bart": transformers.BartConfig,
    "marian": transformers.MarianConfig,
    "xlnet": transformers.XLNetConfig,
}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_every_hf_config_field_is_in_the_table(family):
    """A transformers release that adds a field fails here until the table says what it does."""
    cls = CONFIGS[family]
    names = set(cls().to_dict()) | set(cls.attribute_map)
    missing = sorted(n for n in names if field_status(family, n) is None)
    assert not missing, f"{cls.__name__} fields missing from lmforge's {family} table: {missing}"
    assert ALIASES[family] == dict(cls.attribute_map)
    for spec in TABLES[family].values():
        assert spec.status in ("read", "supported", "refused", "ignored") and spec.note


def test_docs_hold_the_rendered_tables():
    docs = (Path(__file__).parents[1] / "docs" / "models.md").read_text(encoding="utf-8")
    assert fields_markdown() in docs, "docs/models.md is out of date: paste lmforge.interop.hf_fields.fields_markdown()"


# ---- parity of the newly supported settings ----------------------------------------------------

SEQ2SEQ = dict(
    encoder_layers=2,
    decoder_layers=1,
    d_model=32,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=96,
    max_position_embeddings=24,
    pad_token_id=1,
    decoder_start_token_id=1,
)
BERT = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=96,
    max_position_embeddings=24,
)
LLAMA = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    vocab_size=96,
    max_position_embeddings=24,
)

PARITY = {
    "gpt2-unscaled": (
        transformers.GPT2LMHeadModel,
        transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=24, scale_attn_weights=False
        ),
    ),
    **{
        f"llama-{act}": (transformers.LlamaForCausalLM, transformers.LlamaConfig(**LLAMA, hidden_act=act))
        for act in ("relu", "gelu_pytorch_tanh", "gelu", "gelu_new")
    },
    "bert-pretraining-untied": (
        transformers.BertForPreTraining,
        transformers.BertConfig(**BERT, tie_word_embeddings=False),
    ),
    "bert-mlm-untied": (transformers.BertForMaskedLM, transformers.BertConfig(**BERT, tie_word_embeddings=False)),
    "bart-untied": (
        transformers.BartForConditionalGeneration,
        transformers.BartConfig(**SEQ2SEQ, tie_word_embeddings=False),
    ),
    "marian-untied": (
        transformers.MarianMTModel,
        transformers.MarianConfig(**SEQ2SEQ, decoder_vocab_size=96, tie_word_embeddings=False),
    ),
    "marian-unshared": (
        transformers.MarianMTModel,
        transformers.MarianConfig(**SEQ2SEQ, decoder_vocab_size=96, share_encoder_decoder_embeddings=False),
    ),
}


def _logits(model, x, mask, y):
    """Logits of an HF or an lmforge model (the decoder's, for an encoder-decoder)."""
    cfg = model.config
    with torch.no_grad():
        if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "arch", "") == "encoder-decoder":
            out = model(input_ids=x, attention_mask=mask, decoder_input_ids=y)
        else:
            out = model(input_ids=x, attention_mask=mask)
    return out.prediction_logits if hasattr(out, "prediction_logits") else out.logits


@pytest.mark.parametrize("case", list(PARITY))
def test_parity_of_settings_that_converted_wrong(case, tmp_path):
    cls, config = PARITY[case]
    torch.manual_seed(0)
    hf = cls(config).eval()
    x = torch.randint(2, 96, (2, 9))
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    y = torch.randint(2, 96, (2, 7))
    ours = from_hf(hf)
    ref, got = _logits(hf, x, mask, y), _logits(ours, x, mask, y)
    keep = mask[..., None] if ref.shape[1] == x.shape[1] else 1
    assert ((ref - got).abs() * keep).max().item() <= TOL
    to_hf(ours, tmp_path / "hf")  # and back: transformers loads the same model
    again = cls.from_pretrained(tmp_path / "hf").eval()
    assert ((_logits(again, x, mask, y) - got).abs() * keep).max().item() <= TOL


# ---- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, field",
    [
        (
            transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, scale_attn_by_inverse_layer_idx=True),
            "scale_attn_by_inverse_layer_idx=True",
        ),
        (transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, add_cross_attention=True), "add_cross_attention=True"),
        (transformers.LlamaConfig(**LLAMA, hidden_act="quick_gelu"), "hidden_act"),
        (transformers.LlamaConfig(**LLAMA, head_dim=16), "head_dim=16"),
        (transformers.LlamaConfig(**LLAMA, mlp_bias=True), "mlp_bias=True"),
        (
            transformers.LlamaConfig(
                **LLAMA, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
            ),
            "rope_parameters=",
        ),
        (transformers.BertConfig(**BERT, is_decoder=True), "is_decoder=True"),
        (transformers.BertConfig(**BERT, hidden_act="mish"), "hidden_act"),
        (transformers.BartConfig(**{**SEQ2SEQ, "decoder_ffn_dim": 48}), "decoder_ffn_dim=48"),
        (
            transformers.MarianConfig(**SEQ2SEQ, decoder_vocab_size=120, share_encoder_decoder_embeddings=False),
            "decoder_vocab_size=120",
        ),
    ],
)
def test_unsupported_settings_are_refused_by_name_and_value(config, field):
    from lmforge.interop.hf import config_from_hf

    with pytest.raises(ConfigError) as e:
        config_from_hf(config.to_dict())
    assert field in str(e.value) and "\n" not in str(e.value)


def test_legacy_keys_and_aliases():
    from lmforge.interop.hf import config_from_hf

    base = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=8).to_dict()
    cfg, _ = config_from_hf(
        {
            **{k: v for k, v in base.items() if k != "n_embd"},
            "hidden_size": 16,
            "num_beams": 4,
            "torch_dtype": "float16",
        }
    )
    assert cfg.d_model == 16
    with pytest.raises(ConfigError, match="rope_scaling"):
        config_from_hf({**transformers.LlamaConfig(**LLAMA).to_dict(), "rope_scaling": {"type": "dynamic"}})
    with pytest.raises(ConfigError, match="position_embedding_type='relative_key'"):
        config_from_hf({**transformers.BertConfig(**BERT).to_dict(), "position_embedding_type": "relative_key"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_from_hf({**base, "brand_new_switch": 3})
    assert any("brand_new_switch=3" in str(w.message) for w in caught)


def test_a_tied_copy_that_differs_is_refused():
    """The config says tied, the checkpoint holds two different matrices: converting would drop one."""
    from lmforge.interop.hf import from_hf_state

    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=8)
    )
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["lm_head.weight"] += 1.0
    with pytest.raises(CheckpointError, match="differs from 'transformer.wte.weight'"):
        from_hf_state(hf.config.to_dict(), state)


# ---- lmforge's recipe switches ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, switch",
    [
        ("gpt-tiny", {"activation": "relu2"}),
        ("bert-tiny", {"activation": "relu2"}),
        ("gpt-tiny", {"qk_norm": True}),
        ("llama-tiny", {"qk_norm": True}),
        ("seq2seq-tiny", {"qk_norm": True}),
        ("gpt-tiny", {"logit_softcap": 30.0}),
        ("bert-tiny", {"logit_softcap": 30.0}),
    ],
)
def test_recipe_switches_without_an_hf_equivalent_are_refused_by_name(preset, switch, tmp_path):
    from lmforge.config import ModelConfig
    from lmforge.models import build_model

    model = build_model(ModelConfig.from_preset(preset, **switch))
    name, value = next(iter(switch.items()))
    with pytest.raises(ConfigError, match=f"{name}={value}"):
        to_hf(model, tmp_path / "hf")


BART_LIKE = dict(norm_position="post", embedding_norm=True, lm_head_bias=True)


@pytest.mark.parametrize(
    "preset, changes",
    [("gpt-tiny", {}), ("llama-tiny", {}), ("bert-tiny", {}), ("seq2seq-tiny", BART_LIKE)],
    ids=["gpt2", "llama", "bert", "bart"],
)
def test_zero_init_proj_converts_like_any_init(preset, changes, tmp_path):
    """Only the starting point differs: the model converts, and HF computes its logits."""
    from lmforge.config import ModelConfig
    from lmforge.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset(preset, zero_init_proj=True, **changes)).eval()
    with torch.no_grad():
        for p in model.parameters():  # a trained model's weights: no zero projections
            if p.ndim == 2:
                p.normal_(0.0, 0.05)
    to_hf(model, tmp_path / "hf")
    back = from_hf(tmp_path / "hf").eval()
    x = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        if model.config.arch == "encoder-decoder":
            a, b = model(x, decoder_input_ids=x).logits, back(x, decoder_input_ids=x).logits
        else:
            a, b = model(x).logits, back(x).logits
    assert (a - b).abs().max().item() <= TOL
