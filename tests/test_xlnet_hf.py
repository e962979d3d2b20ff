"""Numerical parity of lmforge's XLNet with HF's XLNetLMHeadModel, with permutation masks and
target mappings, before and after export (``from_pretrained``), at two configurations: a plain
one and an awkward one (3 heads, width 96, untied head, relu)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import ConfigError  # noqa: E402
from lmforge.interop import from_hf, to_hf  # noqa: E402
from lmforge.models import XLNetLM, build_model, count_parameters  # noqa: E402

TOL = 1e-4
CONFIGS = [
    dict(vocab_size=120, d_model=64, n_layer=2, n_head=4, d_inner=128),
    dict(
        vocab_size=1000, d_model=96, n_layer=3, n_head=3, d_inner=200, ff_activation="relu", tie_word_embeddings=False
    ),
]


def _random_orders(B: int, T: int, P: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """perm_mask (B, T, T) and target_mapping (B, P, T): a random order per row, its last P predicted."""
    perm, tm = torch.zeros(B, T, T), torch.zeros(B, P, T)
    for b in range(B):
        order = torch.randperm(T, generator=g)
        rank = torch.empty(T, dtype=torch.long)
        rank[order] = torch.arange(T)
        perm[b] = (rank[None, :] >= rank[:, None]).float()
        tm[b, torch.arange(P), order[T - P :]] = 1
    return perm, tm


def _cases(vocab: int):
    g = torch.Generator().manual_seed(0)
    B, T = 3, 12
    x = torch.randint(0, vocab, (B, T), generator=g)
    tt = torch.zeros_like(x)
    tt[:, 7:] = 1
    mask = torch.ones_like(x)
    mask[1, 9:], mask[2, 5:] = 0, 0
    perm, tm = _random_orders(B, T, 4, g)
    return {
        "plain": (dict(input_ids=x), None),
        "perm+targets": (dict(input_ids=x, perm_mask=perm, target_mapping=tm), None),
        "perm+targets+segments": (dict(input_ids=x, perm_mask=perm, target_mapping=tm, token_type_ids=tt), None),
        "padding+segments": (dict(input_ids=x, attention_mask=mask, token_type_ids=tt), mask),
    }


def _max_diff(a_model, b_model, vocab) -> float:
    worst = 0.0
    with torch.no_grad():
        for kwargs, mask in _cases(vocab).values():
            a, b = a_model(**kwargs).logits, b_model(**kwargs).logits
            d = (a - b).abs() if mask is None else (a - b).abs() * mask[..., None]
            worst = max(worst, d.max().item())
    return worst


@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=["plain", "awkward"])
def test_parity_import_and_export(idx, tmp_path):
    torch.manual_seed(idx)
    hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(dropout=0.0, **CONFIGS[idx])).eval()
    ours = from_hf(hf)
    assert isinstance(ours, XLNetLM) and ours.config.tie_embeddings == CONFIGS[idx].get("tie_word_embeddings", True)
    assert count_parameters(ours) == sum(p.numel() for p in hf.parameters())
    vocab = ours.config.vocab_size
    assert _max_diff(hf, ours, vocab) <= TOL
    to_hf(ours, tmp_path / "hf")
    reloaded = transformers.XLNetLMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert _max_diff(reloaded, ours, vocab) <= TOL
    again = from_hf(tmp_path / "hf")  # the directory, read without transformers' model object
    assert _max_diff(again, ours, vocab) == 0.0
    assert again.config == ours.config


def test_a_model_lmforge_built_exports_and_keeps_its_context(tmp_path):
    from lmforge.config import ModelConfig

    torch.manual_seed(0)
    ours = build_model(ModelConfig.from_preset("xlnet-tiny", max_positions=48, text_start_id=3)).eval()
    to_hf(ours, tmp_path / "hf")
    reloaded = transformers.XLNetLMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert _max_diff(reloaded, ours, ours.config.vocab_size) <= TOL
    back = from_hf(tmp_path / "hf")
    assert (back.config.max_positions, back.config.text_start_id) == (48, 3)


@pytest.mark.parametrize(
    "changes, field",
    [(dict(attn_type="uni"), "attn_type"), (dict(bi_data=True), "bi_data"), (dict(clamp_len=8), "clamp_len")],
)
def test_settings_lmforge_cannot_reproduce_are_refused(changes, field):
    hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**CONFIGS[0], **changes))
    with pytest.raises(ConfigError, match=field):
        from_hf(hf)


@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=["plain", "awkward"])
def test_memory_matches_hf_mems(idx):
    """Segment recurrence: a second call attending to the first one's memory, with masks and segments."""
    torch.manual_seed(idx)
    hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(dropout=0.0, mem_len=7, **CONFIGS[idx])).eval()
    ours = from_hf(hf)
    kwargs, _ = _cases(ours.config.vocab_size)["perm+targets+segments"]
    first = torch.randint(0, ours.config.vocab_size, (3, 9))
    with torch.no_grad():
        a1, b1 = hf(first, use_mems=True), ours(first, mem_len=7)
        assert all(torch.allclose(m.transpose(0, 1), n, atol=TOL) for m, n in zip(a1.mems, b1.mems))
        a2 = hf(**kwargs, mems=a1.mems, use_mems=True)
        b2 = ours(**kwargs, mems=b1.mems, mem_len=7)
        mask = torch.ones(3, 12, dtype=torch.long)
        mask[0, 10:] = 0
        a3 = hf(kwargs["input_ids"], attention_mask=mask, mems=a1.mems, use_mems=False)
        b3 = ours(kwargs["input_ids"], attention_mask=mask, mems=b1.mems)
    assert (a2.logits - b2.logits).abs().max() <= TOL
    assert all(torch.allclose(m.transpose(0, 1), n, atol=TOL) for m, n in zip(a2.mems, b2.mems))
    assert b2.mems[0].shape == (3, 7, ours.config.d_model)
    assert ((a3.logits - b3.logits).abs() * mask[..., None]).max() <= TOL
