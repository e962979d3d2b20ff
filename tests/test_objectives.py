"""Objectives: statistics of the corruptions, exact reconstructions, resuming and rank slicing."""

import json

import numpy as np
import pytest
import torch

from lmforge.data.corpus import shakespeare
from lmforge.data.masking import TokenMasker
from lmforge.data.objectives import OBJECTIVES, make_batches
from lmforge.data.sampler import IGNORE_INDEX
from lmforge.data.shards import prepare
from lmforge.data.spans import InfillSampler, collapse_spans, random_spans_noise_mask
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import train_tokenizer

OPTIONS = {"span": {}, "infill": {}, "mlm": {"whole_word": True}}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """About 300 kB of plays in 12 documents, byte-level BPE with 500 tokens and 16 sentinels."""
    root = tmp_path_factory.mktemp("objectives")
    for i, play in enumerate(shakespeare("train")[:12]):
        (root / f"{i:02d}.txt").write_text(play.text[:25_000])
    tok = train_tokenizer("bpe", [p.read_text() for p in sorted(root.glob("*.txt"))], 500, sentinels=16)
    return prepare(root, root / "data", tok, val_fraction=0.2, progress=False)


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer("wordpiece", [d.text[:30_000] for d in shakespeare("train")[:3]], 600)


def batches(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- causal ---------------------------------------------------------------------------------
def test_causal_labels_are_the_next_tokens(ds):
    b = make_batches("causal", ds, 8, 32, seed=0).next_batch()
    assert set(b) == {"input_ids", "labels"} and b["input_ids"].shape == (8, 32) and b["input_ids"].dtype == torch.int64
    assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    seq = make_batches("causal", ds, 4, 32, order="sequential").next_batch()
    stream = torch.from_numpy(ds.train[: 4 * 32 + 1].astype(np.int64))
    assert torch.equal(seq["input_ids"].flatten(), stream[:-1]) and torch.equal(seq["labels"].flatten(), stream[1:])


def test_causal_doc_mask_numbers_the_documents_of_each_window(ds):
    from lmforge.nn import document_ids_from_separators

    eos = ds.tokenizer.eos_id
    sampler = make_batches("causal", ds, 16, 64, order="sequential", doc_mask=True)
    plain = make_batches("causal", ds, 16, 64, order="sequential")
    crossed = 0
    for _ in range(sampler.batches_per_epoch):
        b, p = sampler.next_batch(), plain.next_batch()
        assert set(b) == {"input_ids", "labels", "document_ids"} and b["document_ids"].dtype == torch.int64
        assert torch.equal(b["input_ids"], p["input_ids"]) and torch.equal(b["labels"], p["labels"])
        assert torch.equal(b["document_ids"], document_ids_from_separators(b["input_ids"], eos))
        crossed += int((b["document_ids"][:, -1] > 0).sum())
    assert crossed > 0  # some windows do hold a boundary


def test_sequential_order_walks_epochs(ds):
    s = make_batches("causal", ds, 4, 64, split="val", order="sequential")
    assert s.windows_per_epoch == (len(ds.val) - 1) // 64 and s.batches_per_epoch == s.windows_per_epoch // 4
    first = s.next_batch()
    assert s.state_dict() == {"objective": "causal", "seed": 0, "step": 1, "epoch": 0, "offset": 4}
    s.load_state_dict({"objective": "causal", "seed": 0, "step": s.windows_per_epoch})  # exactly 4 epochs on
    assert s.epoch == 4 and same(s.next_batch(), first)


# ---- resuming and data parallelism, for every objective ------------------------------------------------
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_restored_state_gives_the_same_batches(ds, objective):
    run = make_batches(objective, ds, 4, 48, seed=3, **OPTIONS.get(objective, {}))
    batches(run, 2)
    state = json.loads(json.dumps(run.state_dict()))  # a checkpoint holds it as plain data
    expected = batches(run, 3)
    resumed = make_batches(objective, ds, 4, 48, seed=99, **OPTIONS.get(objective, {}))
    resumed.load_state_dict(state)
    assert all(same(a, b) for a, b in zip(batches(resumed, 3), expected))
    assert state["step"] == 2 and state["seed"] == 3
    other = make_batches(objective, ds, 4, 48, seed=4, **OPTIONS.get(objective, {}))
    assert not same(
        other.next_batch(), make_batches(objective, ds, 4, 48, seed=3, **OPTIONS.get(objective, {})).next_batch()
    )


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_ranks_take_contiguous_rows_of_the_global_batch(ds, objective):
    single = batches(make_batches(objective, ds, 6, 40, seed=1, **OPTIONS.get(objective, {})), 2)
    ranks = [
        batches(make_batches(objective, ds, 6, 40, seed=1, rank=r, world_size=3, **OPTIONS.get(objective, {})), 2)
        for r in range(3)
    ]
    for step, full in enumerate(single):
        for key, value in full.items():
            assert torch.equal(torch.cat([ranks[r][step][key] for r in range(3)]), value), (step, key)
        assert ranks[1][step]["input_ids"].shape[0] == 2


def test_state_from_another_objective_is_refused(ds):
    with pytest.raises(ConfigError, match="causal"):
        make_batches("mlm", ds, 4, 32).load_state_dict(make_batches("causal", ds, 4, 32).state_dict())


# ---- masked LM -------------------------------------------------------------------------------------
def test_mlm_statistics(ds):
    tok = ds.tokenizer
    special = np.zeros(tok.vocab_size, bool)
    special[tok.special_ids] = True
    s = make_batches("mlm", ds, 64, 128, seed=0)
    chosen = candidates = masked = randomised = kept = 0
    for b in batches(s, 13):  # 106k tokens
        ids, labels = b["input_ids"].numpy(), b["labels"].numpy()
        assert (ids[:, 0] == tok.cls_id).all() and (ids[:, -1] == tok.sep_id).all()
        assert (b["attention_mask"] == 1).all()
        sel = labels != IGNORE_INDEX
        assert not special[labels[sel]].any()  # special tokens are never chosen
        assert not sel[:, [0, -1]].any()
        originals = np.where(sel, labels, ids)  # unchosen positions hold their original token
        candidates += (~special[originals]).sum()
        chosen += sel.sum()
        masked += (ids[sel] == tok.mask_id).sum()
        kept += (ids[sel] == labels[sel]).sum()
        swapped = sel & (ids != tok.mask_id) & (ids != labels)
        randomised += swapped.sum()
        assert not special[ids[swapped]].any()  # random replacements are ordinary tokens
    assert candidates >= 100_000
    assert abs(chosen / candidates - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.01
    assert abs(randomised / chosen - 0.1) < 0.01 and abs(kept / chosen - 0.1) < 0.01


def test_masker_labels_exactly_the_chosen_tokens_and_skips_padding(ds):
    tok = ds.tokenizer
    masker = TokenMasker(tok, probability=0.5)
    rng = np.random.default_rng(0)
    ids = np.concatenate([[tok.cls_id], ds.train[:5000].astype(np.int64), [tok.sep_id], np.full(3000, tok.pad_id)])
    inputs, labels = masker(ids, rng)
    chosen = labels != IGNORE_INDEX
    assert np.array_equal(labels[chosen], ids[chosen]) and np.array_equal(inputs[~chosen], ids[~chosen])
    assert not chosen[-3000:].any() and not chosen[0] and 0.45 < chosen[:5002].mean() < 0.55


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_whole_word_masking_chooses_all_pieces_of_a_word(ds, wordpiece, kind):
    tok = wordpiece if kind == "wordpiece" else ds.tokenizer
    ids = np.array(tok.encode(" ".join(d.text[:3000] for d in shakespeare("val"))), dtype=np.int64)
    masker = TokenMasker(tok, probability=0.3, whole_word=True)
    starts = masker.word_starts(ids)
    pieces = [tok.id_to_token(i) for i in ids]
    if kind == "wordpiece":
        assert all(starts[i] != pieces[i].startswith("##") for i in range(len(ids)))
    else:  # " un" + "gentle" is one word; " You" or "," starts one
        text = [tok.decode([i]) for i in ids]
        glued = [False] + [text[i][0].isalnum() and text[i - 1][-1].isalnum() for i in range(1, len(ids))]
        assert starts.tolist() == [not g for g in glued]
        assert starts[[i for i, p in enumerate(pieces) if p.startswith("Ġ")]].all()
    _, labels = masker(ids, np.random.default_rng(0))
    word = np.cumsum(starts)
    chosen = labels != IGNORE_INDEX
    for w in np.unique(word[chosen]):
        assert chosen[word == w].all()
    assert (~starts).any() and 0.25 < chosen.mean() < 0.35


# ---- next sentence prediction -------------------------------------------------------------------------
def test_nsp_pairs(ds):
    tok = ds.tokenizer
    s = make_batches("mlm+nsp", ds, 500, 64, seed=0, mlm_probability=0.0)
    labels = []
    stream = ds.train.astype(np.int64).tobytes()
    for step, b in enumerate(batches(s, 20)):  # 10k pairs
        labels += b["next_sentence_label"].tolist()
        for row in range(300 if step == 0 else 0):  # check the layout of 300 pairs in detail
            ids, types, att = (b[k][row].numpy() for k in ("input_ids", "token_type_ids", "attention_mask"))
            n = att.sum()
            seps = np.flatnonzero(ids == tok.sep_id)
            first, second = seps[0], seps[-1]
            assert ids[0] == tok.cls_id and second == n - 1 and len(seps) == 2
            assert (types[: first + 1] == 0).all() and (types[first + 1 : n] == 1).all() and (types[n:] == 0).all()
            assert (att[:n] == 1).all() and (ids[n:] == tok.pad_id).all()
            pair = np.concatenate([ids[1:first], ids[first + 1 : second]]).tobytes()
            if b["next_sentence_label"][row] == 0:  # B continues A in the stream
                assert _aligned_find(stream, pair)
    assert len(labels) == 10_000 and abs(np.mean(labels) - 0.5) < 0.02


def _aligned_find(hay: bytes, pin: bytes) -> bool:
    at = hay.find(pin)
    while at >= 0 and at % 8:
        at = hay.find(pin, at + 1)
    return at >= 0


# ---- span corruption -----------------------------------------------------------------------------------
def test_span_corruption_reconstructs_the_original(ds):
    tok = ds.tokenizer
    s = make_batches("span", ds, 16, 64, order="sequential", decoder_start_id=tok.pad_id)
    sentinel_set = set(tok.sentinel_ids)
    for step in range(3):
        b = s.next_batch()
        for row in range(16):
            index = step * 16 + row
            original = ds.train[index * s.window : (index + 1) * s.window].astype(np.int64).tolist()
            inputs = [i for i, m in zip(b["input_ids"][row].tolist(), b["attention_mask"][row].tolist()) if m]
            targets = b["labels"][row].tolist()
            assert inputs[-1] == targets[-1] == tok.eos_id
            fills, current = {}, None
            for t in targets[:-1]:
                if t in sentinel_set:
                    current = fills.setdefault(t, [])
                else:
                    current.append(t)
            rebuilt = [x for t in inputs[:-1] for x in (fills[t] if t in sentinel_set else [t])]
            assert rebuilt == original
            assert b["decoder_input_ids"][row].tolist() == [tok.pad_id] + targets[:-1]
    assert b["input_ids"].shape[1] == 64


def test_span_noise_density_and_mean_span_length():
    rng = np.random.default_rng(0)
    noise_tokens = spans = total = 0
    for length in rng.integers(100, 600, size=400):
        mask = random_spans_noise_mask(int(length), 0.15, 3.0, rng)
        assert not mask[0] and mask[-1]  # starts with kept tokens, ends with a span
        noise_tokens += mask.sum()
        spans += (mask[1:] & ~mask[:-1]).sum()
        total += length
    assert abs(noise_tokens / total - 0.15) < 0.015
    assert abs(noise_tokens / spans - 3.0) < 0.3


def test_collapse_spans():
    ids = np.arange(10)
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 0, 1, 1], bool)
    assert collapse_spans(ids, mask, np.array([-1, -2, -3])).tolist() == [0, -1, 3, 4, -2, 6, 7, -3]


def test_span_needs_enough_sentinels(ds):
    with pytest.raises(ConfigError, match="sentinel"):
        make_batches("span", ds, 4, 512)


# ---- text infilling -----------------------------------------------------------------------------------
def test_infill_replaces_spans_by_single_masks(ds):
    tok = ds.tokenizer
    sampler = make_batches("infill", ds, 4, 64)
    assert isinstance(sampler, InfillSampler)
    rng = np.random.default_rng(0)
    ids = np.arange(1000, 1400)  # distinct ids make the alignment visible
    removed = spans = masks = 0
    for _ in range(200):
        out = sampler.infill(ids, rng)
        kept = out[out != tok.mask_id]
        assert (np.diff(kept) > 0).all()  # the kept tokens, in order
        gap_after = np.searchsorted(ids, kept)  # where each kept token sits in the original
        masks += (out == tok.mask_id).sum()
        removed += len(ids) - len(kept)
        spans += (np.diff(np.concatenate([[-1], gap_after, [len(ids)]])) > 1).sum()
        # every removed stretch is marked by at least one mask, and no two masks are adjacent
        assert not ((out[1:] == tok.mask_id) & (out[:-1] == tok.mask_id)).any()
    assert abs(removed / (200 * len(ids)) - 0.3) < 0.03
    assert masks >= spans and abs(removed / masks - 3.0) < 0.3  # Poisson(3) spans, empty ones included


def test_infill_batches(ds):
    tok = ds.tokenizer
    b = make_batches("infill", ds, 4, 64, order="sequential", decoder_start_id=tok.eos_id).next_batch()
    window = 62
    original = ds.train[:window].astype(np.int64).tolist()
    assert b["labels"][0].tolist() == [tok.bos_id] + original + [tok.eos_id]
    assert b["decoder_input_ids"][0].tolist() == [tok.eos_id] + b["labels"][0, :-1].tolist()
    n = int(b["attention_mask"][0].sum())
    assert b["input_ids"][0, 0] == tok.bos_id and b["input_ids"][0, n - 1] == tok.eos_id and n < 64
    assert (b["input_ids"][0, n:] == tok.pad_id).all()


# ---- the factory -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda ds: make_batches("prefix-lm", ds, 4, 32), ConfigError, "unknown objective"),
        (lambda ds: make_batches("causal", ds, 4, 32, whole_word=True), ConfigError, "not an option"),
        (lambda ds: make_batches("causal", ds, 6, 32, world_size=4), ConfigError, "divisible"),
        (lambda ds: make_batches("causal", ds, 4, 32, rank=2, world_size=2), ConfigError, "rank"),
        (lambda ds: make_batches("causal", ds, 4, 10**8), ConfigError, "seq_len"),
        (lambda ds: make_batches("mlm+nsp", ds, 4, 32, order="sequential"), ConfigError, "order"),
        (lambda ds: make_batches("causal", ds, 4, 32, split="test"), DataError, "no split"),
        (lambda ds: make_batches("causal", ds, 4, 32, train_tokenizer("char", ["abc"])), DataError, "tokenizer"),
    ],
)
def test_factory_errors(ds, call, error, message):
    with pytest.raises(error, match=message) as e:
        call(ds)
    assert "\n" not in str(e.value)


def test_factory_opens_a_directory(ds):
    b = make_batches("causal", ds.path, 2, 16, tokenizer=ds.tokenizer, split="val").next_batch()
    assert b["input_ids"].shape == (2, 16)
