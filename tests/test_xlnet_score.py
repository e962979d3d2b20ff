"""Scoring with XLNet: log P along a factorisation order; left to right it is the causal score."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.infer import order_score, score_ids
from lmforge.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_preset("xlnet-tiny", vocab_size=40, n_head=3, d_model=48, max_positions=16))


def _direct(model, ids, order):
    """Each log P(x_{z_t} | x_{z_<t}) on its own: one forward per t with only z_t predicted and the
    tokens after it in the order replaced by others (left to right: cut off instead)."""
    T = len(ids)
    g = torch.Generator().manual_seed(T)
    left_to_right = torch.equal(order, torch.arange(T))
    out = []
    for t in range(1, T):
        x = ids.clone()
        x[order[t + 1 :]] = torch.randint(0, 40, (T - t - 1,), generator=g)
        if left_to_right:
            x = ids[: t + 1]
        n = len(x)
        rank = torch.empty(T, dtype=torch.long)
        rank[order] = torch.arange(T)
        rank = rank[:n]
        perm = (rank[None, :] >= rank[:, None]).float()
        tm = torch.zeros(1, n)
        tm[0, order[t]] = 1
        with torch.no_grad():
            logits = model.eval()(x[None], perm_mask=perm[None], target_mapping=tm[None]).logits[0, 0]
        out.append(float(logits.log_softmax(-1)[ids[order[t]]]))
    return out


def test_left_to_right_equals_the_sum_of_per_position_logprobs(model):
    ids = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(1))
    direct = _direct(model, ids, torch.arange(12))
    got = order_score(model, ids)
    assert got.n_tokens == 11 and got.token_ids == ids[1:].tolist()
    assert got.token_logprobs == pytest.approx(direct, abs=1e-5)
    assert got.logprob == pytest.approx(sum(direct), abs=1e-4)
    # and it is the causal score of score_ids (the decoder path), also over sliding windows
    assert score_ids(model, [ids])[0].token_logprobs == pytest.approx(direct, abs=1e-5)
    long = torch.randint(0, 40, (40,), generator=torch.Generator().manual_seed(2))
    windowed = score_ids(model, [long, ids], window=16, stride=8)
    assert windowed[0].n_tokens == 39 and windowed[1].token_logprobs == pytest.approx(direct, abs=1e-5)


def test_any_order_is_the_chain_rule_along_it(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 40, (9,), generator=g)
    order = torch.randperm(9, generator=g)
    got = order_score(model, ids, order.tolist())
    assert got.token_ids == ids[order[1:]].tolist()
    assert got.token_logprobs == pytest.approx(_direct(model, ids, order), abs=1e-5)
    assert got.logprob != pytest.approx(order_score(model, ids).logprob, abs=1e-3)  # orders differ


def test_bad_orders_are_refused(model):
    with pytest.raises(LMForgeError, match="permutation"):
        order_score(model, [1, 2, 3], [0, 0, 1])


def test_what_xlnet_does_not_do_is_refused_by_name(model):
    from lmforge.infer import generate_ids

    with pytest.raises(LMForgeError, match="XLNet"):
        generate_ids(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2)


def test_hidden_token_metrics_never_see_the_hidden_tokens(model):
    """The masked LM's test on an XLNet: hidden positions are predicted from the others only, so
    changing the hidden tokens' values leaves the logits at the hidden positions unchanged."""
    import numpy as np

    from lmforge.train.objective_metrics import hidden_token_metrics

    rng = np.random.default_rng(0)
    stream = rng.integers(0, 40, size=16 * 12)
    m = hidden_token_metrics(model, stream, 16, frequent_id=3, seed=5)
    assert 0 <= m["hidden_accuracy"] <= 1 and 0 <= m["hidden_baseline"] <= 1
    # the same hidden positions as the metric draws (same seed), their tokens changed
    P = round(0.15 * 16)
    hid_rng = np.random.default_rng(5)
    rows = stream.reshape(12, 16).copy()
    hidden = [np.sort(hid_rng.choice(16, P, replace=False)) for _ in range(12)]
    predictions = []
    for variant in range(2):
        x = rows.copy()
        if variant:
            for r, h in enumerate(hidden):
                x[r, h] = (x[r, h] + 1 + rng.integers(0, 38, size=P)) % 40
        tm = torch.nn.functional.one_hot(torch.from_numpy(np.stack(hidden)), 16).float()
        perm = tm.amax(1, keepdim=True).expand(12, 16, 16)
        with torch.no_grad():
            predictions.append(model.eval()(torch.from_numpy(x), perm_mask=perm, target_mapping=tm).logits)
    torch.testing.assert_close(predictions[0], predictions[1], rtol=0, atol=1e-5)
