"""What each paradigm learned: masked-token accuracy, span metrics, span filling, and the
restoration task built from the bundled plays."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.corpus import VALIDATION_PLAYS
from lmforge.finetune.metrics import chrf
from lmforge.finetune.tasks import restoration_prompt, restoration_rows, restoration_source
from lmforge.infer.fill import fill_spans, span_filling_metrics, split_spans
from lmforge.models import build_model
from lmforge.tokenizer import train_tokenizer
from lmforge.train.objective_metrics import masked_lm_metrics, most_frequent_token, span_metrics, span_targets
from lmforge.train.run import fit_model_to_tokenizer


# ---- masked-token accuracy -------------------------------------------------------------------
def _one_hot_logits(pred, vocab=10):
    return torch.nn.functional.one_hot(torch.tensor(pred), vocab).float()


def test_mask_accuracy_counts_only_mask_positions_and_baseline_by_hand():
    MASK, FREQ = 9, 3
    # row: [CLS]=0, a masked token (gold 5), a kept token (gold 6), a random swap (input 7, gold 3), a masked 3
    input_ids = torch.tensor([[0, MASK, 6, 7, MASK]])
    labels = torch.tensor([[-100, 5, 6, 3, 3]])
    # predictions at the labelled positions, in order: 5 (right), 6 (right, kept), 3 (right, random), 4 (wrong)
    out = SimpleNamespace(
        logits=_one_hot_logits([5, 6, 3, 4]), loss=torch.tensor(1.0), mlm_loss=torch.tensor(1.0), nsp_logits=None
    )
    m = masked_lm_metrics(MASK, FREQ)({"input_ids": input_ids, "labels": labels}, out)
    assert m["mask_accuracy"] == (1, 2)  # of the two [MASK] positions only the first is right
    assert m["mask_baseline"] == (1, 2)  # always answering 3 gets the second [MASK] right
    assert m["mlm_accuracy"] == (3, 4)  # the engine's accuracy over every labelled position
    # the same with the head run on every position (B, T, V)
    full = torch.zeros(1, 5, 10)
    full[0, 1, 5] = full[0, 2, 6] = full[0, 3, 3] = full[0, 4, 4] = 1.0
    out.logits = full
    assert masked_lm_metrics(MASK, FREQ)({"input_ids": input_ids, "labels": labels}, out)["mask_accuracy"] == (1, 2)


def test_most_frequent_token_leaves_out_special_ids():
    tokens = np.array([1, 1, 1, 2, 2, 4])
    assert most_frequent_token(tokens, 6) == 1
    assert most_frequent_token(tokens, 6, exclude=[1]) == 2


# ---- span corruption -------------------------------------------------------------------------
S0, S1, S2, EOS = 20, 21, 22, 1


def test_span_targets_and_teacher_forced_span_metrics_by_hand():
    labels = torch.tensor([[S0, 5, 6, S1, 7, EOS], [S0, 8, S1, 9, 9, EOS]])
    assert span_targets(labels, [S0, S1, S2], EOS).tolist() == [[-1, 0, 0, -1, 1, -1], [-1, 0, -1, 1, 1, -1]]
    # row 0: span 0 fully right, span 1 wrong; row 1: span 0 right, span 1 one token of two wrong
    pred = torch.tensor([[S0, 5, 6, S1, 3, EOS], [S0, 8, S1, 9, 4, EOS]])
    out = SimpleNamespace(logits=torch.nn.functional.one_hot(pred, 30).float(), loss=torch.tensor(1.0))
    m = span_metrics([S0, S1, S2], EOS)({"labels": labels}, out)
    assert m["span_token_accuracy"] == (4, 6)  # 5, 6, 8, 9 right; 7 and the last 9 wrong
    assert m["span_exact_tf"] == (2, 4)


def test_split_spans():
    assert split_spans([S0, 5, 6, S1, 7, EOS, S2, 8], [S0, S1, S2], EOS) == {0: [5, 6], 1: [7]}
    assert split_spans([4, S1, 7, S1, 9], [S0, S1, S2], EOS) == {1: [7]}  # before the first sentinel: dropped
    assert split_spans([EOS], [S0, S1, S2], EOS) == {}


def test_span_filling_metrics_greedy_by_hand(monkeypatch):
    import lmforge.infer.fill as spans

    gold = torch.tensor([[S0, 5, 6, S1, 7, EOS], [S0, 8, S1, 9, EOS, -100]])
    produced = [[S0, 5, 6, S1, 3, EOS], [S0, 8, S1, 9, EOS]]  # 3 of the 4 spans exactly right

    def fake_generate(model, input_ids, attention_mask=None, **kw):
        return SimpleNamespace(token_lists=lambda: produced)

    monkeypatch.setattr(spans, "generate_ids", fake_generate)
    model = SimpleNamespace(
        config=SimpleNamespace(arch="encoder-decoder", eos_id=EOS), parameters=lambda: iter([torch.zeros(1)])
    )
    tok = SimpleNamespace(sentinel_ids=[S0, S1, S2])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4), "labels": gold}
    m = span_filling_metrics(model, tok, [batch])
    assert m == {"span_exact_match": 0.75, "spans": 4.0}


@pytest.fixture(scope="module")
def tiny_t5():
    text = "to be or not to be that is the question\n" * 30
    tok = train_tokenizer("unigram", [text], vocab_size=60, sentinels=8)
    torch.manual_seed(0)
    cfg = fit_model_to_tokenizer(ModelConfig.from_preset("seq2seq-tiny", max_positions=32), tok)
    return build_model(cfg).eval(), tok


def test_fill_spans_on_a_tiny_model(tiny_t5):
    model, tok = tiny_t5
    filled = fill_spans(model, tok, "to be <extra_id_0> not to be", max_new_tokens=6)
    assert filled.source == "to be <extra_id_0> not to be"
    assert len(filled.spans) == 1
    assert filled.text == f"to be {filled.spans[0]} not to be"
    # [MASK] spellings are numbered as sentinels left to right
    two = fill_spans(model, tok, "[MASK] be or [MASK]", max_new_tokens=6)
    assert two.source == "<extra_id_0> be or <extra_id_1>" and len(two.spans) == 2


def test_fill_spans_refuses_text_without_sentinels_and_other_models(tiny_t5, gpt):
    from lmforge.errors import LMForgeError

    model, tok = tiny_t5
    with pytest.raises(LMForgeError, match="no sentinel"):
        fill_spans(model, tok, "to be or not")
    with pytest.raises(LMForgeError, match="encoder-decoder"):
        fill_spans(gpt, tok, "to be <extra_id_0>")


# ---- restoration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target, source",
    [
        ("Now, sir, 'thought is free:' I pray you, bring", "now sir thought is free i pray you bring"),
        ("And then 'twas fresh in murmur,--as, you know,", "and then twas fresh in murmur as you know"),
        ("O'er the twelve-month: I'll go.\n--\nHa!", "o'er the twelve month i'll go\nha"),
        ("  Two  spaces,and tabs\t!", "two spaces and tabs"),
    ],
)
def test_restoration_source_by_hand(target, source):
    assert restoration_source(target) == source
    assert restoration_source(source) == source  # the rules are idempotent


@pytest.fixture(scope="module")
def restoration():
    return restoration_rows(passage_chars=120)


def test_restoration_split_by_play_and_no_passage_on_both_sides(restoration):
    train, val = restoration
    assert {r["play"] for r in val} == set(VALIDATION_PLAYS)
    assert not {r["play"] for r in train} & set(VALIDATION_PLAYS)
    assert len({r["play"] for r in train}) == 32
    assert not {r["source"] for r in train} & {r["source"] for r in val}
    assert len(train) > 4 * len(val) > 0


def test_restoration_source_is_derived_from_target_by_the_rules(restoration):
    train, val = restoration
    for r in train[::50] + val[::10]:
        assert r["source"] == restoration_source(r["target"])
        assert len(r["target"]) <= 120 or "\n" not in r["target"]  # whole lines, one long line alone
        # the words are the target's, in order: only case, punctuation and spacing differ
        words = re.sub(r"(?!(?<=[^\W\d_])'(?=[^\W\d_]))[^\w\s]|_", " ", r["target"].lower()).split()
        assert r["source"].split() == words
        assert r["source"].count("\n") <= r["target"].count("\n")


def test_restoration_val_per_play_and_prompt():
    _, val = restoration_rows(passage_chars=120, val_per_play=5)
    assert len(val) == 5 * len(VALIDATION_PLAYS)
    assert restoration_prompt("a b") == "a b\nRESTORED:\n"


def test_chrf_moves_with_punctuation_and_case():
    ref = ["Now, sir, I pray you."]
    assert chrf(ref, ref) == pytest.approx(100.0)
    assert chrf(["now sir i pray you"], ref) < chrf(["Now, sir, I pray you"], ref) < 100.0
