"""Tokenizers: train, save, load and use them, all on HuggingFace ``tokenizers``.

Four kinds, each with the special tokens its paradigm expects:

========== ================================ ==============================================
kind       model (as in)                    special tokens (sentinels ``<extra_id_N>`` optional)
========== ================================ ==============================================
bpe        byte-level BPE (GPT-2, RoBERTa)  ``<s> <pad> </s> <unk> <mask>``
wordpiece  WordPiece (BERT)                 ``[PAD] [UNK] [CLS] [SEP] [MASK]``
unigram    Unigram LM (T5, SentencePiece)   ``<pad> </s> <unk> <s> <mask>`` + 100 sentinels
char       one token per character          ``<pad> <unk> <s> </s> <mask>``
========== ================================ ==============================================

Everything lives in one ``tokenizer.json`` (the HF fast-tokenizer format), so a tokenizer trained
here loads in ``transformers`` and an HF model directory's tokenizer loads here. Special-token
roles (pad, eos, mask, ...) are recognised by their usual spellings, so no side file is needed.

Byte-level BPE and char tokenizers round-trip text exactly (``decode(encode(t)) == t``); WordPiece
normalises whitespace and Unigram maps unseen characters to ``<unk>``. Python strings may hold
lone surrogates, which are not Unicode scalar values and cannot be UTF-8 encoded: ``encode``
refuses them (``errors="strict"``, a :class:`~lmforge.errors.DataError`) or replaces each with
U+FFFD (``errors="replace"``); the policies and the reading of files live in :mod:`lmforge.text`.

One module (about 560 lines): training, loading and the fast byte-level encode path share the
conventions of the HF spec (each kind's special tokens, sentinels, the canonical Unigram order),
and the fast path must split text exactly as the trained tokenizer does (tested against it).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import string
import unicodedata
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from itertools import chain, count
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.text import ERRORS as ERRORS  # re-exported: the error policies, as before
from lmforge.text import SURROGATE, check_errors, clean_text, read_text
from lmforge.text import utf8_len as utf8_len  # re-exported: as before

KINDS = ("bpe", "wordpiece", "unigram", "char")
DEFAULT_VOCAB_SIZE = 8192  # for the learned kinds; a char vocabulary is whatever characters occur
TOKENIZER_FILE = "tokenizer.json"

# Role tokens each kind is trained with, in id order (ids 0, 1, 2, ...).
SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "bpe": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),  # RoBERTa / BART order
    "wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),  # BERT
    "unigram": ("<pad>", "</s>", "<unk>", "<s>", "<mask>"),  # T5 order (pad 0, eos 1, unk 2), + bos / mask
    "char": ("<pad>", "<unk>", "<s>", "</s>", "<mask>"),
}
# T5 ships 100 sentinels; the others add them on request (``sentinels=N``) for span corruption.
DEFAULT_SENTINELS = {"bpe": 0, "wordpiece": 0, "unigram": 100, "char": 0}

# How each role is spelled across ours and common HF tokenizers (first match wins).
ROLE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<s>", "<|endoftext|>", "<|begin_of_text|>", "[CLS]"),
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "[SEP]"),
    "cls": ("[CLS]", "<s>", "<cls>"),
    "sep": ("[SEP]", "</s>", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
}
_SENTINEL = re.compile(r"<extra_id_(\d+)>")
_CHAR_SPLIT = r"[\s\S]"  # every character is its own pre-token


def sentinel_token(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer:
    """A thin wrapper over a HF ``tokenizers.Tokenizer`` with the ids lmforge needs.

    ``encode`` adds no special tokens unless asked (objectives place them), and padding and
    truncation are always off (collators do that). ``hf`` is the wrapped object for anything else.
    """

    def __init__(self, hf: HFTokenizer):
        hf.no_padding()
        hf.no_truncation()
        self.hf = hf
        self._json = hf.to_str()
        spec = json.loads(self._json)
        self.kind = _infer_kind(spec)
        # a stable identity for "was this dataset / checkpoint made with this tokenizer?"
        self.fingerprint = hashlib.sha256(self._json.encode("utf-8")).hexdigest()[:16]
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.special_tokens: dict[str, int] = {
            t.content: i for i, t in sorted(hf.get_added_tokens_decoder().items()) if t.special
        }
        role = {
            r: next((self.special_tokens[s] for s in spellings if s in self.special_tokens), None)
            for r, spellings in ROLE_SPELLINGS.items()
        }
        self.pad_id: int | None = role["pad"]
        self.unk_id: int | None = role["unk"]
        self.bos_id: int | None = role["bos"]
        self.eos_id: int | None = role["eos"]
        self.cls_id: int | None = role["cls"]
        self.sep_id: int | None = role["sep"]
        self.mask_id: int | None = role["mask"]
        numbered = {int(m.group(1)): i for t, i in self.special_tokens.items() if (m := _SENTINEL.fullmatch(t))}
        self.sentinel_ids: list[int] = [numbered[k] for k in sorted(numbered)]  # sentinel_ids[k] is <extra_id_k>
        self._char_ids = _char_lookup(spec) if self.kind == "char" else None
        self._piecewise = _is_plain_byte_level(spec)
        self._added_texts = [t.content for t in hf.get_added_tokens_decoder().values()]

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = False, errors: str = "strict") -> list[int]:
        return self.encode_batch([text], add_special_tokens=add_special_tokens, errors=errors)[0]

    def encode_batch(
        self, texts: list[str], *, add_special_tokens: bool = False, errors: str = "strict"
    ) -> list[list[int]]:
        """Encode many texts in parallel on all cores (HF ``encode_batch``, or an exact shortcut:
        :meth:`_encode_shortcut`)."""
        check_errors(errors)
        texts = list(texts)
        fast = None if add_special_tokens else self._encode_shortcut(texts)
        if fast is not None:
            return [ids.tolist() for ids in fast]
        return self._encode_hf(texts, add_special_tokens, errors)

    def encode_arrays(self, texts: list[str], *, errors: str = "strict") -> list[np.ndarray]:
        """:meth:`encode_batch`'s ids (no special tokens) as int64 arrays: for tokenizing corpora."""
        check_errors(errors)
        texts = list(texts)
        fast = self._encode_shortcut(texts)
        if fast is not None:
            return fast
        return [np.asarray(ids, dtype=np.int64) for ids in self._encode_hf(texts, False, errors)]

    def _encode_hf(self, texts: list[str], add_special_tokens: bool, errors: str) -> list[list[int]]:
        try:
            encodings = self.hf.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
        except TypeError:  # HF refuses strings with lone surrogates: apply the policy, then retry
            where = ["text"] if len(texts) == 1 else [f"text {i}" for i in range(len(texts))]
            texts = [clean_text(t, errors, w) if isinstance(t, str) else t for t, w in zip(texts, where)]
            encodings = self.hf.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def _encode_shortcut(self, texts: list[str]) -> list[np.ndarray] | None:
        """The ids HF gives, found faster where that is exact: char tokenizers look them up in a table
        (~30x faster), byte-level BPE encodes each distinct piece once (:func:`_encode_pieces`, ~2x).
        None when HF must decide: added-token text inside (HF matches it first), lone surrogates
        (the error policy decides), other tokenizers."""
        if self._char_ids is None and not self._piecewise:
            return None
        if not all(isinstance(t, str) for t in texts) or any(a in t for a in self._added_texts for t in texts):
            return None
        if any(not t.isascii() and SURROGATE.search(t) for t in texts):
            return None
        if self._char_ids is not None:
            return [
                self._char_ids[
                    np.minimum(np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32), len(self._char_ids) - 1)
                ]
                for t in texts
            ]
        return _encode_pieces(self.hf, texts)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_special_tokens: bool = False) -> list[str]:
        return self.hf.decode_batch([[int(i) for i in ids] for ids in batch], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    @property
    def special_ids(self) -> list[int]:
        """All special-token ids (roles and sentinels), sorted: never masked, never sampled."""
        return sorted(self.special_tokens.values())

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"

    def info(self) -> dict:
        """What ``lmforge tokenizer info`` shows."""
        roles = {r: getattr(self, f"{r}_id") for r in ROLE_SPELLINGS}
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "special_tokens": {r: (self.id_to_token(i), i) for r, i in roles.items() if i is not None},
            "sentinels": len(self.sentinel_ids),
        }

    # ---- files -----------------------------------------------------------------------------
    def to_str(self) -> str:
        return self._json

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json``: to ``path`` if it ends in ``.json``, else into the directory ``path``."""
        p = Path(path)
        if p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / TOKENIZER_FILE
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self._json, encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a ``tokenizer.json``, or the one inside a directory (model, dataset or HF model dir)."""
        p = Path(path)
        if p.is_dir():
            return cls.from_hf_dir(p)
        if not p.is_file():
            raise DataError(f"{p}: no such tokenizer file")
        try:
            return cls(HFTokenizer.from_file(str(p)))
        except Exception as e:  # the HF parser raises a bare Exception on bad JSON / unknown fields
            raise DataError(f"{p}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """The tokenizer of an HF model directory (its ``tokenizer.json``, the fast-tokenizer format)."""
        d = Path(directory)
        f = d / TOKENIZER_FILE
        if not f.is_file():
            raise DataError(
                f"{d}: no {TOKENIZER_FILE} in this directory; lmforge reads the fast-tokenizer format "
                f"(write it with transformers' AutoTokenizer.from_pretrained(...).save_pretrained(dir))"
            )
        return cls.load(f)

    @classmethod
    def from_str(cls, text: str) -> Tokenizer:
        return cls(HFTokenizer.from_str(text))


def special_id(tokenizer, role: str, model=None) -> int | None:
    """The id of a special-token role (``"pad"``, ``"eos"``, ``"mask"``, ... or ``"eos_id"``): the
    tokenizer's, else the model config's (``model``: a model or its config; optional); None when
    neither has one. Any object with ``<role>_id`` attributes serves as the tokenizer (or None)."""
    name = role if role.endswith("_id") else f"{role}_id"
    for source in (tokenizer, getattr(model, "config", model)):
        v = getattr(source, name, None) if source is not None else None
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return int(v)
    return None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A ``tokenizer.json`` file or a directory holding one."""
    return Tokenizer.load(path)


def check_compatible(tokenizer: Tokenizer, vocab_size: int, where: str) -> None:
    """Refuse a tokenizer that does not fit a model's embedding of ``vocab_size`` rows.

    The embedding may be padded past the tokenizer's vocabulary to the next multiple of 64 (as
    nanoGPT pads GPT-2's 50257 to 50304, or T5's 32100 becomes 32128) and no further: a larger
    gap, or a tokenizer with more ids than rows, means the two were not made for each other.
    """
    n = tokenizer.vocab_size
    padded = -(-n // 64) * 64
    if not n <= vocab_size <= padded:
        raise CheckpointError(
            f"{where}: the tokenizer has {n} tokens but the model's embedding has {vocab_size} rows "
            f"(expected {n}, or up to {padded} when padded to a multiple of 64); "
            f"use the tokenizer the model was trained with (fingerprint {tokenizer.fingerprint})"
        )


# ---- training -------------------------------------------------------------------------------
def train_tokenizer(
    kind: str,
    texts: Iterable[str | os.PathLike],
    vocab_size: int | None = None,
    *,
    special_tokens: Iterable[str] | None = None,
    sentinels: int | None = None,
    errors: str = "strict",
) -> Tokenizer:
    """Train a tokenizer of ``kind`` (bpe | wordpiece | unigram | char) on texts (or paths of text files).

    ``special_tokens`` replaces the kind's role tokens (:data:`SPECIAL_TOKENS`); ``sentinels`` adds
    ``<extra_id_0..N-1>`` (default: 100 for unigram, else 0). ``vocab_size`` counts the special
    tokens too and is ignored by ``char``, whose vocabulary is the characters seen.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind: unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    check_errors(errors)
    specials = list(SPECIAL_TOKENS[kind] if special_tokens is None else special_tokens)
    n_sentinels = DEFAULT_SENTINELS[kind] if sentinels is None else sentinels
    if n_sentinels < 0:
        raise ConfigError(f"sentinels: must be >= 0, got {n_sentinels}")
    specials += [sentinel_token(i) for i in range(n_sentinels)]
    if kind != "char":
        vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
        minimum = len(specials) + (256 if kind == "bpe" else 1)
        if vocab_size < minimum:
            what = "the 256 byte tokens and " if kind == "bpe" else ""
            raise ConfigError(
                f"vocab_size: {vocab_size} is too small for {what}{len(specials)} special tokens; "
                f"use at least {minimum}"
            )
    stream = _Texts(texts, errors) if kind == "wordpiece" else _text_stream(texts, errors)  # read twice
    hf = _TRAINERS[kind](stream, vocab_size, specials)
    return Tokenizer(hf)


def _text_stream(texts: Iterable[str | os.PathLike], errors: str) -> Iterator[str]:
    for t in texts:
        if isinstance(t, os.PathLike):
            yield read_text(t, errors)
        else:
            yield clean_text(t, errors)


class _Texts:
    """The training texts as a stream that can be read more than once."""

    def __init__(self, texts: Iterable[str | os.PathLike], errors: str):
        self.texts, self.errors = list(texts), errors

    def __iter__(self) -> Iterator[str]:
        return _text_stream(self.texts, self.errors)


def _train_bpe(texts: Iterator[str], vocab_size: int, specials: list[str]) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # no prefix: exact round trip
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(texts, trainer)
    return hf


def _continuing_pieces(texts: Iterable[str]) -> list[str]:
    """``##c`` for every character that can continue a word under BERT's pre-tokenizer (not
    whitespace, punctuation or a control character), in code-point order."""
    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    return [
        "##" + c
        for c in sorted(chars)
        if not (c.isspace() or c in string.punctuation or unicodedata.category(c)[0] in "PC")
    ]


def _train_wordpiece(texts: _Texts, vocab_size: int, specials: list[str]) -> HFTokenizer:
    unk = next((s for s in specials if s in ROLE_SPELLINGS["unk"]), None)
    if unk is None:
        raise ConfigError("special_tokens: WordPiece needs an unknown token ([UNK] or <unk>)")
    hf = HFTokenizer(models.WordPiece(unk_token=unk))
    # BERT's cleanup, but cased and keeping accents: the bundled corpus is cased English
    hf.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    # HF's trainer numbers the "##c" pieces in hash-map order and breaks ties between equally
    # frequent merges by those numbers, so two trainings on the same text differed. Listed first
    # (as special tokens of the trainer only), the pieces get fixed numbers: the same vocabulary
    # every time.
    pieces = _continuing_pieces(texts)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials + pieces, show_progress=False)
    hf.train_from_iterator(texts, trainer)
    state = json.loads(hf.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in specials]  # ordinary pieces again
    return HFTokenizer.from_str(json.dumps(state))


def _train_unigram(texts: Iterator[str], vocab_size: int, specials: list[str]) -> HFTokenizer:
    unk = next((s for s in specials if s in ROLE_SPELLINGS["unk"]), None)
    hf = HFTokenizer(models.Unigram())
    # SentencePiece-style "▁word" pieces; newlines split off so that lines do not glue words
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n+"), "isolated"),
            pre_tokenizers.Metaspace(prepend_scheme="never"),
        ]
    )
    hf.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=unk, show_progress=False
    )
    hf.train_from_iterator(texts, trainer)
    return _canonical_unigram(hf, len(specials))


def _canonical_unigram(hf: HFTokenizer, n_special: int) -> HFTokenizer:
    """Make Unigram training reproducible. HF's EM sums floats in hash-map order, so scores differ
    in the last bits between runs (round them; sort ties by piece), and characters kept only for
    coverage get descending scores in hash-set order (give them out in character order)."""
    spec = json.loads(hf.to_str())
    vocab = spec["model"]["vocab"]
    rest = sorted(([p, round(s, 6)] for p, s in vocab[n_special:]), key=lambda ps: (-ps[1], ps[0]))
    floor = min((s for p, s in rest if len(p) > 1), default=0.0)
    tail = [ps for ps in rest if len(ps[0]) == 1 and ps[1] < floor]  # the rarest characters, last
    if tail:
        rest = rest[: len(rest) - len(tail)]
        rest += [[p, s] for p, (_, s) in zip(sorted(p for p, _ in tail), tail)]
    spec["model"]["vocab"] = vocab[:n_special] + rest
    return HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def _train_char(texts: Iterator[str], vocab_size: int | None, specials: list[str]) -> HFTokenizer:
    unk = next((s for s in specials if s in ROLE_SPELLINGS["unk"]), None)
    if unk is None:
        raise ConfigError("special_tokens: a char tokenizer needs an unknown token (<unk> or [UNK])")
    seen: set[str] = set()
    for t in texts:
        seen.update(t)
    vocab = {tok: i for i, tok in enumerate(specials + sorted(seen - set(specials)))}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=unk))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_SPLIT), "isolated")
    hf.decoder = decoders.Fuse()  # join characters without spaces
    hf.add_special_tokens(specials)
    return hf


def _char_lookup(spec: dict) -> np.ndarray | None:
    """Code point -> id of a char tokenizer (unknown -> unk, also past the end), if it is plain:
    one-character vocabulary entries, an unknown token, no normalizer."""
    model = spec["model"]
    vocab, unk = model.get("vocab", {}), model.get("unk_token")
    if spec.get("normalizer") is not None or unk not in vocab:
        return None
    chars = {ord(t): i for t, i in vocab.items() if len(t) == 1}
    table = np.full(max(chars, default=0) + 2, vocab[unk], dtype=np.int64)
    table[list(chars)] = list(chars.values())
    return table


# ---- byte-level BPE, one distinct piece at a time ----------------------------------------
# Byte-level BPE cuts text into pieces with GPT-2's regex and merges only within a piece, so a
# text's ids are its pieces' ids back to back. Text repeats a few tens of thousands of distinct
# pieces: cutting with Python's regex engine and encoding each distinct piece once is ~2x faster
# than HF's encode_batch on two cores (its pre-tokenizer's regex takes most of its time). On
# ASCII the regex's classes are unambiguous (\p{L} = A-Za-z, \p{N} = 0-9, \s = the six ASCII
# spaces); stretches with other characters go to HF whole, cut between a printable ASCII
# character and a newline: no piece spans that place, and neither side's pieces look past it (a
# run of spaces splits by what follows it, so a stretch must not end in one).
_GPT2_ASCII = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", re.ASCII)
_CUT = re.compile(r"(?<=[!-~])(?=\n)")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_PIECES_PER_CALL = 4096  # distinct pieces per HF sequence: several sequences keep every core busy


def _is_plain_byte_level(spec: dict) -> bool:
    """GPT-2's byte-level BPE as HF runs it: no normalizer, the ByteLevel regex, no prefix space, no dropout."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
        and model.get("type") == "BPE"
        and not model.get("dropout")
    )


def _ascii_stretches(text: str) -> list[tuple[str, bool]]:
    """``text`` as consecutive (stretch, is_ascii), cut only where :data:`_CUT` allows."""
    if text.isascii():
        return [(text, True)]
    cuts = [0, *(m.start() for m in _CUT.finditer(text)), len(text)]
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in _NON_ASCII.finditer(text):
        if m.start() < pos:  # inside the stretch already handed to HF
            continue
        lo, hi = max(cuts[bisect_right(cuts, m.start()) - 1], pos), cuts[bisect_left(cuts, m.end())]
        if lo > pos:
            out.append((text[pos:lo], True))
        if out and not out[-1][1] and lo == pos:
            out[-1] = (out[-1][0] + text[lo:hi], False)
        else:
            out.append((text[lo:hi], False))
        pos = hi
    if pos < len(text):
        out.append((text[pos:], True))
    return out


def _encode_pieces(hf: HFTokenizer, texts: list[str]) -> list[np.ndarray]:
    """HF's ids for plain byte-level BPE (:func:`_is_plain_byte_level`, no added token in the texts)."""
    words: list[str] = []  # every ASCII piece of every text, in order
    word_counts: list[int] = []  # pieces per ASCII stretch
    other: list[str] = []  # stretches HF encodes whole
    layout: list[list[tuple[bool, int]]] = []  # per text: (is_ascii, index of the stretch)
    for text in texts:
        parts = []
        for stretch, is_ascii in _ascii_stretches(text):
            if is_ascii:
                pieces = _GPT2_ASCII.findall(stretch)
                words.extend(pieces)
                word_counts.append(len(pieces))
                parts.append((True, len(word_counts) - 1))
            else:
                other.append(stretch)
                parts.append((False, len(other) - 1))
        layout.append(parts)

    distinct: dict[str, int] = defaultdict(count().__next__)  # a new piece gets the next number
    which = np.fromiter(map(distinct.__getitem__, words), np.int64, len(words))  # (W,) distinct index per piece
    # each piece is one "word" of a pre-tokenized sequence: its ids and which piece each id belongs to
    keys = list(distinct)
    batches = [keys[i : i + _PIECES_PER_CALL] for i in range(0, len(keys), _PIECES_PER_CALL)]
    encoded = (
        hf.encode_batch(batches, is_pretokenized=True, add_special_tokens=False)  # _fast has no word_ids
        + hf.encode_batch_fast(other, add_special_tokens=False)
    )
    by_piece = encoded[: len(batches)]
    piece_ids = np.array(list(chain.from_iterable(e.ids for e in by_piece)), np.int64)
    piece_of = np.array(list(chain.from_iterable(e.word_ids for e in by_piece)), np.int64)
    piece_of += np.repeat(np.arange(len(batches), dtype=np.int64) * _PIECES_PER_CALL, [len(e.ids) for e in by_piece])
    lengths = np.bincount(piece_of, minlength=len(distinct))  # ids per distinct piece
    first = np.cumsum(lengths) - lengths  # where each distinct piece's ids start in piece_ids

    n = lengths[which]  # (W,) ids per piece of the texts
    ends = np.cumsum(n)
    ids = piece_ids[np.repeat(first[which] - (ends - n), n) + np.arange(int(ends[-1]) if len(ends) else 0)]
    bounds = np.concatenate([[0], ends])[np.concatenate([[0], np.cumsum(word_counts, dtype=np.int64)])]
    stretch_ids = [
        ids[bounds[k] : bounds[k + 1]] if is_ascii else np.asarray(encoded[len(batches) + k].ids, np.int64)
        for parts in layout
        for is_ascii, k in parts
    ]
    out, i = [], 0
    for parts in layout:
        out.append(np.concatenate(stretch_ids[i : i + len(parts)]))
        i += len(parts)
    return out


_TRAINERS = {"bpe": _train_bpe, "wordpiece": _train_wordpiece, "unigram": _train_unigram, "char": _train_char}


def _infer_kind(spec: dict) -> str:
    """bpe | wordpiece | unigram | char, or the HF model type in lower case for anything else."""
    model = (spec.get("model") or {}).get("type", "unknown")
    if model == "WordLevel":
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") == "Split" and pre.get("pattern") == {"Regex": _CHAR_SPLIT}:
            return "char"
    return {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}.get(model, model.lower())
