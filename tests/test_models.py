"""Property tests of the three model families: causality, padding, KV cache, attention weights."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import MODEL_PRESETS, ModelConfig
from lmforge.errors import CheckpointError
from lmforge.models import build_model, count_parameters, load_model, save_model

# Every model switch of the training recipe (docs/training.md, "Recipe switches") at once.
RECIPE = dict(activation="relu2", zero_init_proj=True, qk_norm=True, logit_softcap=2.0)

DECODERS = {
    "learned": ModelConfig.from_preset("gpt-tiny"),
    "rope-gqa": ModelConfig.from_preset("llama-tiny"),
    "sinusoidal-post": ModelConfig.from_preset("gpt-tiny", positions="sinusoidal", norm_position="post"),
    "recipe": ModelConfig.from_preset("gpt-tiny", **RECIPE),
    "recipe-rope-gqa": ModelConfig.from_preset("llama-tiny", **RECIPE),
}
SEQ2SEQ = {
    "learned": ModelConfig.from_preset("seq2seq-tiny"),
    "rope-gqa": ModelConfig.from_preset(
        "seq2seq-tiny", positions="rope", n_kv_head=2, norm="rmsnorm", activation="swiglu", bias=False
    ),
    "recipe": ModelConfig.from_preset("seq2seq-tiny", positions="rope", **RECIPE),
}
BERT_RECIPE = ModelConfig.from_preset("bert-tiny", norm_position="pre", positions="rope", **RECIPE)


def _model(cfg):
    m = build_model(cfg).eval()
    if cfg.zero_init_proj:  # every block starts as the identity: give the projections weights, so that
        with torch.no_grad():  # the properties are those of attention that does something
            for name, mod in m.named_modules():
                if name.endswith(("attn.proj", "mlp.proj")):
                    mod.weight.normal_(0.0, 0.05)
    return m


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_every_preset_builds(name):
    cfg = ModelConfig.from_preset(name)
    if cfg.vocab_size * cfg.d_model > 5e6:  # keep big presets cheap: shape only
        cfg = cfg.replace(vocab_size=128, max_positions=64)
    m = build_model(cfg)
    total = sum(p.numel() for p in m.parameters())
    assert count_parameters(m) == total
    assert 0 < count_parameters(m, non_embedding=True) < total


@settings(max_examples=15, deadline=None)
@given(t=st.integers(0, 14), seed=st.integers(0, 10_000))
def test_decoder_is_causal(t, seed):
    for cfg in DECODERS.values():
        m = _model(cfg)
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, cfg.vocab_size, y[:, t + 1 :].shape, generator=g)
        with torch.no_grad():
            a, b = m(x).logits, m(y).logits
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)


def _padded(lengths, vocab, T=None):
    T = T or max(lengths)
    x = torch.randint(0, vocab, (len(lengths), T))
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return x, mask


@pytest.mark.parametrize(
    "cfg",
    list(DECODERS.values()) + [ModelConfig.from_preset("bert-tiny"), BERT_RECIPE],
    ids=[*DECODERS, "bert", "bert-recipe"],
)
def test_padding_invariance_single_stack(cfg):
    m = _model(cfg)
    lengths = [12, 7, 3]
    x, mask = _padded(lengths, cfg.vocab_size)
    with torch.no_grad():
        batch = m(x, attention_mask=mask).logits
        for i, n in enumerate(lengths):
            alone = m(x[i : i + 1, :n]).logits
            assert (batch[i, :n] - alone[0]).abs().max() <= 1e-5


def test_left_padding_with_positions():
    cfg = DECODERS["learned"]
    m = _model(cfg)
    x, _ = _padded([9], cfg.vocab_size)
    left = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = m(left, attention_mask=mask, position_ids=pos).logits[:, 4:]
        b = m(x).logits
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("cfg", list(SEQ2SEQ.values()), ids=list(SEQ2SEQ))
def test_padding_invariance_seq2seq(cfg):
    m = _model(cfg)
    src, smask = _padded([10, 6], cfg.vocab_size)
    tgt, tmask = _padded([8, 5], cfg.vocab_size)
    with torch.no_grad():
        batch = m(src, smask, tgt, tmask).logits
        for i, (ns, nt) in enumerate([(10, 8), (6, 5)]):
            alone = m(src[i : i + 1, :ns], None, tgt[i : i + 1, :nt]).logits
            assert (batch[i, :nt] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", list(DECODERS))
def test_kv_cache_equals_full_forward_decoder(name):
    cfg = DECODERS[name]
    m = _model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        full = m(x).logits
        cache = m.new_cache(2, 32)
        steps = [m(x[:, :5], cache=cache).logits] + [m(x[:, i : i + 1], cache=cache).logits for i in range(5, 20)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("name", list(SEQ2SEQ))
def test_kv_cache_equals_full_forward_seq2seq(name):
    cfg = SEQ2SEQ[name]
    m = _model(cfg)
    src, smask = _padded([9, 5], cfg.vocab_size)
    tgt = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full = m(src, smask, tgt).logits
        enc = m.encode(src, smask).last_hidden_state
        cache = m.new_cache(2, 16)
        steps = [
            m(attention_mask=smask, decoder_input_ids=tgt[:, i : i + 1], encoder_hidden_states=enc, cache=cache).logits
            for i in range(12)
        ]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "cfg",
    [
        DECODERS["learned"],
        DECODERS["rope-gqa"],
        DECODERS["recipe-rope-gqa"],
        ModelConfig.from_preset("bert-tiny"),
        BERT_RECIPE,
        SEQ2SEQ["learned"],
        SEQ2SEQ["recipe"],
    ],
    ids=["decoder", "decoder-rope-gqa", "decoder-recipe", "bert", "bert-recipe", "seq2seq", "seq2seq-recipe"],
)
def test_attention_probabilities(cfg):
    m = _model(cfg)
    x, mask = _padded([10, 6], cfg.vocab_size)
    kwargs = dict(decoder_input_ids=x, decoder_attention_mask=mask) if cfg.arch == "encoder-decoder" else {}
    with torch.no_grad():
        fast = m(x, attention_mask=mask, **kwargs)
        slow = m(x, attention_mask=mask, output_attentions=True, **kwargs)
    assert (fast.logits - slow.logits).abs().max() <= 1e-5
    for w in slow.attentions:
        assert w.min() >= 0
        assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)
        # real queries give padding keys exactly zero weight
        assert w[1, :, :6, 6:].abs().max() == 0
        if cfg.arch != "encoder":  # causal: nothing from the future
            assert torch.triu(w[0], diagonal=1).abs().max() == 0


def test_gqa_with_all_heads_equals_mha():
    a = ModelConfig.from_preset("llama-tiny", n_kv_head=4)
    b = ModelConfig.from_preset("llama-tiny", n_kv_head=None)
    ma, mb = build_model(a).eval(), build_model(b).eval()
    mb.load_state_dict(ma.state_dict())
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.equal(ma(x).logits, mb(x).logits)


def test_losses():
    cfg = ModelConfig.from_preset("bert-tiny")
    m = _model(cfg)
    x = torch.randint(0, 256, (2, 10))
    labels = torch.full_like(x, -100)
    labels[:, 3] = x[:, 3]
    out = m(x, labels=labels, next_sentence_label=torch.tensor([0, 1]))
    assert torch.allclose(out.loss, out.mlm_loss + out.nsp_loss)
    dec = _model(DECODERS["learned"])
    y = x.roll(-1, 1)
    y[:, -1] = -100
    out = dec(x, labels=y)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref, atol=1e-6)


def test_mlm_head_on_masked_positions_only_is_exact():
    """With labels, the MLM head runs on the labelled rows only: same loss, same gradients,
    logits equal to the full logits' labelled rows."""
    m = build_model(ModelConfig.from_preset("bert-tiny")).train()
    x = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.3, x, -100)
    outs, grads = [], []
    for full in (False, True):
        m.zero_grad()
        torch.manual_seed(0)
        out = m(x, labels=labels, full_logits=full)
        out.loss.backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    picked, full = outs
    assert picked.logits.shape == (int((labels != -100).sum()), 256)
    assert torch.allclose(picked.logits, full.logits[labels != -100], atol=1e-6)
    assert torch.allclose(picked.loss, full.loss, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "bert-tiny", "seq2seq-tiny"])
def test_save_load_round_trip(name, tmp_path):
    m = _model(ModelConfig.from_preset(name))
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_refuses_mismatch_and_corruption(tmp_path):
    m = _model(ModelConfig.from_preset("gpt-tiny"))
    save_model(m, tmp_path / "m")
    # a config that disagrees with the weights
    cfg_path = tmp_path / "m" / "config.json"
    good = cfg_path.read_text()
    cfg_path.write_text(good.replace('"d_model": 64', '"d_model": 128'))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path / "m")
    cfg_path.write_text(good.replace('"n_layer": 2', '"n_layer": 3'))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "m")
    cfg_path.write_text(good.replace('"n_layer": 2', '"n_layer": 1'))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(tmp_path / "m")
    cfg_path.write_text(good)
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")


@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny", "seq2seq-tiny"])
def test_fan_in_init_scales_each_linear_by_its_inputs(preset):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, d_model=96, n_head=4, init="fan_in")
    model = build_model(cfg)
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) not in tied]
    assert linears  # a head tied to the embedding keeps the embedding's scale
    for m in linears:
        if m.weight.numel() >= 4096:  # enough samples for a 10% tolerance on the standard deviation
            assert m.weight.std().item() == pytest.approx(m.in_features**-0.5, rel=0.1)
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            assert m.weight.std().item() == pytest.approx(cfg.init_std, rel=0.1)


def test_gpt2_init_scales_residual_projections_by_depth():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt-tiny", d_model=128, n_head=4)
    model = build_model(cfg)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(("attn.proj", "mlp.proj")):
            assert m.weight.std().item() == pytest.approx(cfg.init_std / (2 * cfg.n_layer) ** 0.5, rel=0.1)


def test_relu2_is_relu_squared():
    from lmforge.nn import activation_fn

    x = torch.linspace(-3, 3, 61)
    assert torch.equal(activation_fn("relu2")(x), torch.relu(x) ** 2)


@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny", "seq2seq-tiny"])
@pytest.mark.parametrize("init", ["gpt2", "fan_in"])
def test_zero_init_proj_starts_every_block_as_the_identity(preset, init):
    cfg = ModelConfig.from_preset(preset, zero_init_proj=True, init=init, norm_position="pre")
    model = build_model(cfg).eval()
    writers = [(n, m) for n, m in model.named_modules() if n.endswith(("attn.proj", "mlp.proj"))]
    cross = cfg.decoder_layers if cfg.arch == "encoder-decoder" else 0  # cross_attn.proj
    assert len(writers) == 2 * (cfg.encoder_layers + cfg.decoder_layers) + cross
    for n, m in writers:
        assert torch.count_nonzero(m.weight) == 0, n
        assert m.bias is None or torch.count_nonzero(m.bias) == 0, n
    others = [m for n, m in model.named_modules() if n.endswith(("attn.qkv", "mlp.fc"))]
    assert others and all(m.weight.std() > 0 for m in others)  # the rest keeps its init
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        if cfg.arch == "encoder-decoder":
            hidden = model(x, decoder_input_ids=x, output_hidden_states=True).hidden_states
        else:
            hidden = model(x, output_hidden_states=True).hidden_states
    for h in hidden[1:-1]:  # each block passes its input through (the last is after the final norm)
        assert torch.equal(h, hidden[0])


@pytest.mark.parametrize("preset", ["llama-tiny", "seq2seq-tiny"])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(preset):
    """RMS-normalised heads: scaling the query and key projections (self- and cross-attention)
    leaves the model's output unchanged; without qk_norm it changes it."""
    for qk_norm in (True, False):
        cfg = ModelConfig.from_preset(preset, qk_norm=qk_norm, bias=False)
        torch.manual_seed(0)
        m = build_model(cfg).eval()
        x = torch.randint(0, cfg.vocab_size, (2, 10))
        kwargs = dict(decoder_input_ids=x) if cfg.arch == "encoder-decoder" else {}
        with torch.no_grad():
            before = m(x, **kwargs).logits
            for name, mod in m.named_modules():
                if name.endswith("attn.qkv"):
                    mod.weight[: -cfg.kv_heads * cfg.head_dim] *= 7.0  # the q and k rows
                elif name.endswith(("cross_attn.q", "cross_attn.kv")):
                    mod.weight[: cfg.kv_heads * cfg.head_dim if name.endswith("kv") else None] *= 7.0
            after = m(x, **kwargs).logits
        diff = (before - after).abs().max().item()
        assert diff < 1e-4 if qk_norm else diff > 1e-2  # (up to the norms' eps)


@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny", "seq2seq-tiny"])
def test_logit_softcap_bounds_the_logits_smoothly(preset):
    cfg = ModelConfig.from_preset(preset)
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    capped = build_model(cfg.replace(logit_softcap=3.0)).eval()
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for p in plain.parameters():  # large logits, so that the cap bites
            p.mul_(4.0)
        capped.load_state_dict(plain.state_dict())
        x = torch.randint(0, cfg.vocab_size, (2, 9))
        kwargs = dict(decoder_input_ids=x) if cfg.arch == "encoder-decoder" else {}
        z, c = plain(x, **kwargs).logits, capped(x, **kwargs).logits
    assert z.abs().max() > 3.0 and c.abs().max() < 3.0
    torch.testing.assert_close(c, 3.0 * torch.tanh(z / 3.0))


# ---- document masks: packed documents do not see each other ----------------------------------------

EOS = 3


def _packed(seed: int, T: int = 24, n_docs: int = 3, vocab: int = 256):
    """(2, T) rows of EOS-separated documents (random boundaries), no EOS inside a document."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(EOS + 1, vocab, (2, T), generator=g)
    for row in range(2):
        cuts = torch.randperm(T - 2, generator=g)[: n_docs - 1] + 1
        x[row, cuts] = EOS
    return x


def _doc_ids(x):
    from lmforge.nn import document_ids_from_separators

    return document_ids_from_separators(x, EOS)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_document_mask_hides_earlier_documents_and_stays_causal(seed):
    """Perturbing the tokens of one document changes no logit outside it: not the later documents'
    (no attention across EOS) nor the earlier ones' (causality). The EOS tokens, and so the
    boundaries, stay where they are."""
    for cfg in DECODERS.values():
        m = _model(cfg)
        x = _packed(seed)
        docs = _doc_ids(x)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            base = m(x, document_ids=docs).logits
            for d in range(int(docs.max()) + 1):
                y = x.clone()
                inside = (docs == d) & (x != EOS)
                y[inside] = torch.randint(EOS + 1, cfg.vocab_size, (int(inside.sum()),), generator=g)
                assert torch.equal(_doc_ids(y), docs)
                out = m(y, document_ids=docs).logits
                assert (out - base)[docs != d].abs().max() <= 1e-5, (cfg, d)


@pytest.mark.parametrize("name", list(DECODERS))
def test_document_mask_equals_each_document_alone(name):
    """A packed document's logits are those of the document run on its own at the same positions
    (absolute positions are kept): the mask, not the positions, separates documents."""
    cfg = DECODERS[name]
    m = _model(cfg)
    x = _packed(7)
    docs = _doc_ids(x)
    with torch.no_grad():
        packed = m(x, document_ids=docs).logits
        unmasked = m(x).logits
        for row in range(2):
            for d in range(int(docs[row].max()) + 1):
                cols = (docs[row] == d).nonzero().flatten()
                s, e = int(cols[0]), int(cols[-1]) + 1
                alone = m(x[row : row + 1, s:e], position_ids=torch.arange(s, e)[None]).logits
                assert (packed[row, s:e] - alone[0]).abs().max() <= 1e-5
    assert (packed - unmasked).abs().max() > 1e-3  # the mask does change what a later document sees


@pytest.mark.parametrize("name", ["learned", "recipe-rope-gqa"])
def test_document_mask_with_kv_cache_equals_full_forward(name):
    cfg = DECODERS[name]
    m = _model(cfg)
    x = _packed(11, T=20)
    docs = _doc_ids(x)
    with torch.no_grad():
        full = m(x, document_ids=docs).logits
        cache = m.new_cache(2, 32)
        steps = [m(x[:, :5], cache=cache, document_ids=docs[:, :5]).logits]
        steps += [m(x[:, i : i + 1], cache=cache, document_ids=docs[:, : i + 1]).logits for i in range(5, 20)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_document_mask_attention_probabilities_are_block_diagonal():
    m = _model(DECODERS["recipe"])
    x = _packed(3)
    docs = _doc_ids(x)
    with torch.no_grad():
        out = m(x, document_ids=docs, output_attentions=True)
        fast = m(x, document_ids=docs).logits
    assert (out.logits - fast).abs().max() <= 1e-5
    other = docs[:, None, :, None] != docs[:, None, None, :]  # (B, 1, T, S) query and key in different documents
    for w in out.attentions:
        assert w.masked_select(other).abs().max() == 0
        assert torch.triu(w, diagonal=1).abs().max() == 0


def test_document_ids_open_a_document_at_each_separator():
    x = torch.tensor([[5, 6, EOS, 7, EOS, EOS, 8]])
    assert _doc_ids(x).tolist() == [[0, 0, 1, 1, 2, 3, 3]]
    m = _model(DECODERS["learned"])
    with pytest.raises(Exception, match="document_ids has shape"):
        m(x, document_ids=_doc_ids(x)[:, :-1])
