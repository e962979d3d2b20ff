"""The permutation LM objective (plm): masks as XLNet's pipeline builds them, the partial-prediction
share, exact resume, and the model trained on its batches."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import ModelConfig
from lmforge.data.permutation import PermutationSampler, permutation_masks, prediction_count
from lmforge.data.sampler import IGNORE_INDEX
from lmforge.errors import ConfigError
from lmforge.models import build_model

TOKENS = np.random.default_rng(0).integers(0, 50, 5_000)
OFFSETS = np.array([0, 2_000, 5_000])


def _sampler(batch_size=8, seq_len=24, **kw):
    return PermutationSampler(TOKENS, OFFSETS, None, batch_size, seq_len, **kw)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(2, 40), n=st.integers(1, 39), seed=st.integers(0, 10_000))
def test_masks_follow_the_order(T, n, seed):
    """Every position sees the positions before it in the order, never itself or a later one."""
    n = min(n, T - 1)
    order = np.random.default_rng(seed).permutation(T)
    perm, targets = permutation_masks(order, n)
    assert list(targets) == list(order[T - n :])
    rank = np.argsort(order)
    for i in range(T):
        for j in range(T):
            assert perm[i, j] == (0 if rank[j] < rank[i] else 1)


@pytest.mark.parametrize("k", [6.0, 4.0, 3.0])
def test_partial_prediction_share_matches_one_over_k(k):
    s = _sampler(batch_size=64, seq_len=50, plm_k=k)  # 50 / k is not whole: the counts are drawn
    predicted = total = 0
    counts = set()
    for _ in range(40):
        b = s.next_batch()
        used = (b["labels"] != IGNORE_INDEX).sum(1)
        assert torch.equal(used, b["target_mapping"].sum((1, 2)))
        counts |= set(used.tolist())
        predicted += int(used.sum())
        total += b["input_ids"].numel()
    share = predicted / total  # 128,000 positions: the standard error is below 0.001
    assert abs(share - 1 / k) < 0.005, share
    assert len(counts) == 2  # floor and ceil of 50 / k


def test_batch_is_what_hf_xlnet_consumes():
    s = _sampler()
    b = s.next_batch()
    B, T = 8, 24
    P = s.n_rows
    assert P == 4 and b["perm_mask"].shape == (B, T, T) and b["target_mapping"].shape == (B, P, T)
    assert b["labels"].shape == (B, P) and b["input_ids"].shape == (B, T)
    tm, labels = b["target_mapping"], b["labels"]
    for r in range(B):
        for p in range(P):
            if labels[r, p] == IGNORE_INDEX:
                assert tm[r, p].sum() == 0
            else:
                t = int(tm[r, p].argmax())
                assert tm[r, p].sum() == 1 and labels[r, p] == b["input_ids"][r, t]
                assert b["perm_mask"][r, t, t] == 1  # a target may not see itself
    # contiguous windows of the stream
    window = b["input_ids"][0].numpy()
    starts = [i for i in range(len(TOKENS) - T + 1) if np.array_equal(TOKENS[i : i + T], window)]
    assert starts


def test_resume_is_exact_and_seeds_differ():
    run = _sampler(seed=3)
    for _ in range(2):
        run.next_batch()
    state = json.loads(json.dumps(run.state_dict()))
    expected = [run.next_batch() for _ in range(3)]
    resumed = _sampler(seed=99)
    resumed.load_state_dict(state)
    for a, b in zip([resumed.next_batch() for _ in range(3)], expected):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(_sampler(seed=4).next_batch()["perm_mask"], _sampler(seed=3).next_batch()["perm_mask"])


def test_run_config_pairs_plm_with_xlnet():
    from lmforge.train import RunConfig

    cfg = RunConfig.from_preset("shakespeare-xlnet")
    assert (cfg.data.objective, cfg.model.arch, cfg.data.plm_k) == ("plm", "xlnet", 6.0)
    with pytest.raises(ConfigError, match="model.arch=xlnet"):
        RunConfig.from_preset("tiny-gpt").override({"data.objective": "plm"})
    with pytest.raises(ConfigError, match="data.plm_k"):
        cfg.override({"data.plm_k": "1"})


@pytest.mark.parametrize("kw", [dict(plm_k=1.0), dict(seq_len=1)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ConfigError):
        _sampler(**kw)


def test_prediction_count_bounds():
    rng = np.random.default_rng(0)
    assert prediction_count(3, 6.0, rng) == 1  # at least one
    assert prediction_count(4, 1.1, rng) == 3  # at most T - 1: one position stays context


def test_xlnet_learns_from_plm_batches():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("xlnet-tiny", vocab_size=50, n_layer=1, d_model=32, n_head=2)
    m = build_model(cfg)
    s = _sampler(batch_size=16, seq_len=16)
    b = s.next_batch()
    out = m(**b)
    used = b["labels"] != IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(out.logits[used], b["labels"][used])
    assert out.logits.shape == (16, s.n_rows, 50) and torch.allclose(out.loss, ref, atol=1e-6)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    first = float(out.loss.detach())
    for _ in range(15):
        loss = m(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 0.5


def test_lmforge_train_plm_end_to_end(tmp_path, capsys):
    """tiny-xlnet through ``lmforge train``: PLM loss at each evaluation, the left-to-right score of the
    held-out split at the end, and a model directory that scores like a decoder."""
    from lmforge.cli.main import main
    from lmforge.infer import load_for_inference, score

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"part{i}.txt").write_text("ALL:\nSpeak, speak.\n" * (30 + i), encoding="utf-8")
    n = torch.get_num_threads()
    try:
        args = ["train", "--preset", "tiny-xlnet", "--data.source", str(corpus), "--data.path", str(tmp_path / "d")]
        args += ["--out", str(tmp_path / "run"), "--train.threads", "1", "--train.peak_flops", "1e11"]
        assert main(args + ["--train.max_steps", "6", "--train.eval_every", "3"]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "objective plm" in out and "left to right on" in out and "l2r_bpb" in out
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in m or "loss" in m for m in metrics)
    model, tok = load_for_inference(str(tmp_path / "run" / "best"), "cpu", "fp32")
    assert model.config.arch == "xlnet" and model.config.text_start_id == tok.eos_id
    r = score(model, tok, ["Speak, speak."])[0]
    assert r.n_tokens == len(tok.encode("Speak, speak.")) and r.bits_per_byte > 0
