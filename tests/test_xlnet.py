"""XLNet: the model's streams and masks (tests/test_xlnet_hf.py: parity with HF's XLNetLMHeadModel)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models import build_model

CFG = ModelConfig.from_preset("xlnet-tiny", vocab_size=50, n_head=3, d_model=48, d_ff=80)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(CFG).eval()


def order_masks(order: torch.Tensor, n_predict: int) -> tuple[torch.Tensor, torch.Tensor]:
    """perm_mask (T, T) and target_mapping (P, T) of one factorisation order predicting its last
    ``n_predict`` positions (each target sees the earlier positions of the order)."""
    T = len(order)
    rank = torch.empty(T, dtype=torch.long)
    rank[order] = torch.arange(T)
    perm = (rank[None, :] >= rank[:, None]).float()  # i may not see j unless j comes earlier
    tm = torch.zeros(n_predict, T)
    tm[torch.arange(n_predict), order[T - n_predict :]] = 1
    return perm, tm


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(norm_position="pre"), "norm_position"),
        (dict(activation="swiglu"), "activation"),
        (dict(n_kv_head=1), "n_kv_head"),
        (dict(type_vocab_size=2), "type_vocab_size"),
        (dict(positions="rope"), "positions"),
        (dict(arch="decoder"), "positions"),  # relative positions are XLNet's
    ],
)
def test_config_refuses_what_xlnet_lacks_naming_the_fix(changes, field):
    with pytest.raises(ConfigError, match=rf"^{field}:.*set model\.") as e:
        ModelConfig.from_preset("xlnet-tiny", **changes)
    assert "xlnet" in str(e.value).lower()


def _order_logits(seed: int, n_predict: int, change) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the predictions of a random order of 10 positions, for random tokens x and for
    x changed by ``change(x, order, g)``; and the order."""
    m, g = _model(), torch.Generator().manual_seed(seed)
    order = torch.randperm(10, generator=g)
    perm, tm = order_masks(order, n_predict)
    x = torch.randint(0, CFG.vocab_size, (1, 10), generator=g)
    with torch.no_grad():
        a = m(x, perm_mask=perm[None], target_mapping=tm[None]).logits[0]
        b = m(change(x.clone(), order, g), perm_mask=perm[None], target_mapping=tm[None]).logits[0]
    return a, b, order


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), n_predict=st.integers(1, 9), p=st.integers(0, 8))
def test_query_stream_never_sees_its_own_token(seed, n_predict, p):
    """Changing the token of prediction p leaves p's logits unchanged."""
    p = p % n_predict

    def change(x, order, g):
        t = order[10 - n_predict + p]
        x[0, t] = (x[0, t] + 1) % CFG.vocab_size
        return x

    a, b, _ = _order_logits(seed, n_predict, change)
    assert torch.allclose(a[p], b[p], atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 9))
def test_later_tokens_in_the_order_never_influence_earlier_predictions(seed, k):
    """Every position after the first of the order is predicted; the tokens from order[k] on change.
    Predictions up to the one at order[k] see only order[:k], which is as it was."""

    def change(x, order, g):
        x[0, order[k:]] = (x[0, order[k:]] + torch.randint(1, CFG.vocab_size, (10 - k,), generator=g)) % CFG.vocab_size
        return x  # every one of them changed

    a, b, _ = _order_logits(seed, 9, change)
    assert torch.allclose(a[:k], b[:k], atol=1e-6)
    assert k == 9 or not torch.allclose(a[k:], b[k:], atol=1e-6)  # and the later ones do see them


def test_a_query_that_may_see_nothing_has_an_empty_context():
    """Unlike HF (uniform attention over every position, its own token included)."""
    m = _model()
    T = 6
    perm = torch.ones(1, T, T)
    tm = torch.zeros(1, 1, T)
    tm[0, 0, 2] = 1
    x = torch.randint(0, CFG.vocab_size, (1, T))
    with torch.no_grad():
        a = m(x, perm_mask=perm, target_mapping=tm).logits
        b = m(torch.randint(0, CFG.vocab_size, (1, T)), perm_mask=perm, target_mapping=tm).logits
    assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-6)


def test_padding_is_seen_by_no_one_and_labels_give_the_loss():
    m = _model()
    x = torch.randint(0, CFG.vocab_size, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    y = x.clone()
    y[1, 5:] = 0
    with torch.no_grad():
        a, b = m(x, attention_mask=mask), m(y, attention_mask=mask)
    assert torch.allclose(a.logits[1, :5], b.logits[1, :5], atol=1e-6)
    labels = torch.full((2, 8), -100)
    labels[:, 1] = x[:, 1]
    out = m(x, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[:, 1], x[:, 1])
    assert torch.allclose(out.loss, ref, atol=1e-6)


def test_memory_continues_a_left_to_right_pass():
    """Scoring x2 after x1's memory, left to right, is scoring x1 + x2 in one call: the memory holds
    what each layer saw of x1, and the relative distances run across it."""
    m = _model()
    g = torch.Generator().manual_seed(5)
    x1, x2 = (
        torch.randint(0, CFG.vocab_size, (2, 7), generator=g),
        torch.randint(0, CFG.vocab_size, (2, 5), generator=g),
    )

    def causal(T, first, n):  # perm_mask of the natural order, targets first .. first + n - 1
        tm = torch.zeros(2, n, T)
        tm[:, torch.arange(n), torch.arange(first, first + n)] = 1
        return torch.ones(T, T).triu().expand(2, T, T), tm

    with torch.no_grad():
        perm, _ = causal(7, 0, 1)
        mems = m(x1, perm_mask=perm, mem_len=7).mems
        perm, tm = causal(5, 0, 5)
        stepped = m(x2, perm_mask=perm, target_mapping=tm, mems=mems).logits
        perm, tm = causal(12, 7, 5)
        whole = m(torch.cat([x1, x2], 1), perm_mask=perm, target_mapping=tm).logits
    assert torch.allclose(stepped, whole, atol=1e-5)
