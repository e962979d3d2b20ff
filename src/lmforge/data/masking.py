"""Masked-LM samplers: BERT's 80/10/10 token masking (optionally whole words) and next-sentence pairs."""

from __future__ import annotations

import numpy as np

from lmforge.data.sampler import IGNORE_INDEX, Sampler, pad_to, require_tokens, token_array
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer


class TokenMasker:
    """BERT's corruption: choose ``probability`` of the tokens (never special or padding tokens);
    of those, ``mask_fraction`` become the mask token, ``random_fraction`` a random non-special
    token, and the rest stay. With ``whole_word``, a word's pieces are chosen together."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        probability: float = 0.15,
        whole_word: bool = False,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
    ):
        require_tokens(tokenizer, "mlm", "mask")
        for name, v in (
            ("mlm_probability", probability),
            ("mask_fraction", mask_fraction),
            ("random_fraction", random_fraction),
        ):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {v}")
        if mask_fraction + random_fraction > 1.0:
            raise ConfigError(f"mask_fraction + random_fraction: {mask_fraction + random_fraction} exceeds 1")
        self.mask_id = tokenizer.mask_id
        self.probability, self.mask_fraction, self.random_fraction = probability, mask_fraction, random_fraction
        self.special = np.zeros(tokenizer.vocab_size, dtype=bool)
        self.special[tokenizer.special_ids] = True
        self.random_ids = np.flatnonzero(~self.special)
        self.whole_word = whole_word
        if whole_word:
            self._glue_left, self._glue_right = _word_tables(tokenizer, self.special)

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word: it does not glue to the token before it."""
        starts = np.ones(len(ids), dtype=bool)
        starts[1:] = ~(self._glue_left[ids[1:]] & self._glue_right[ids[:-1]])
        return starts

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(corrupted input ids, labels): labels hold the original id where chosen, else -100."""
        if self.whole_word:
            word = np.cumsum(self.word_starts(ids)) - 1
            chosen = (rng.random(word[-1] + 1) < self.probability)[word]
        else:
            chosen = rng.random(len(ids)) < self.probability
        chosen &= ~self.special[ids]
        labels = np.where(chosen, ids, IGNORE_INDEX)
        u = rng.random(len(ids))
        inputs = ids.copy()
        inputs[chosen & (u < self.mask_fraction)] = self.mask_id
        swap = chosen & (u >= self.mask_fraction) & (u < self.mask_fraction + self.random_fraction)
        inputs[swap] = self.random_ids[rng.integers(0, len(self.random_ids), int(swap.sum()))]
        return inputs, labels


def _word_tables(tokenizer: Tokenizer, special: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vocabulary lookups for whole-word masking: (glues to the token on its left, can be glued to).

    WordPiece marks continuations with ``##``. Elsewhere (byte-level BPE's ``Ġword``, Unigram's
    ``▁word``, characters) a token continues a word when it starts with a letter or digit and the
    token before it ends with one; byte-level tokens are compared by their decoded surface text.
    """
    ids = range(tokenizer.vocab_size)
    pieces = [tokenizer.id_to_token(i) or "" for i in ids]
    if tokenizer.kind == "wordpiece":
        left = np.array([p.startswith("##") for p in pieces])
        right = np.ones(len(pieces), dtype=bool)
    else:
        if tokenizer.kind == "bpe":
            pieces = tokenizer.decode_batch([[i] for i in ids])
        left = np.array([p[:1].isalnum() for p in pieces])
        right = np.array([p[-1:].isalnum() for p in pieces])
    return left & ~special, right & ~special


class MLMSampler(Sampler):
    """Masked LM on packed windows: ``[CLS] window [SEP]`` (when the tokenizer has them), no padding."""

    objective = "mlm"

    def __init__(
        self, *args, mlm_probability: float = 0.15, whole_word: bool = False, **kw
    ):  # args, kw: the base's (tokens, offsets, tokenizer, batch_size, seq_len, seed, ...)
        super().__init__(*args, **kw)
        self.masker = TokenMasker(self.tokenizer, mlm_probability, whole_word)
        self.prefix, self.suffix = token_array(self.tokenizer.cls_id), token_array(self.tokenizer.sep_id)
        self.window = self.seq_len - len(self.prefix) - len(self.suffix)
        self._check_length()

    def _example(self, index, rng):
        ids = np.concatenate([self.prefix, self._window(index, rng), self.suffix])
        inputs, labels = self.masker(ids, rng)
        return {"input_ids": inputs, "attention_mask": np.ones_like(ids), "labels": labels}


class NSPSampler(Sampler):
    """BERT pretraining pairs ``[CLS] A [SEP] B [SEP]`` + padding, with MLM on top.

    A is a random stretch of a document (chosen in proportion to its length), cut at a random
    point; B is what follows A in that document (``next_sentence_label`` 0, "is next") or, with
    probability 1/2, a stretch of another document (label 1, as in HF BERT). ``token_type_ids``
    are 0 for ``[CLS] A [SEP]`` and padding, 1 for ``B [SEP]``.
    """

    objective = "mlm+nsp"
    orders = ("random",)

    def __init__(
        self, *args, mlm_probability: float = 0.15, whole_word: bool = False, **kw
    ):  # args, kw: the base's (tokens, offsets, tokenizer, batch_size, seq_len, seed, ...)
        super().__init__(*args, **kw)
        require_tokens(self.tokenizer, self.objective, "cls", "sep", "pad")
        self.masker = TokenMasker(self.tokenizer, mlm_probability, whole_word)
        self.budget = self.seq_len - 3  # room for A and B
        if self.budget < 2:
            raise ConfigError(f"seq_len: {self.seq_len} leaves no room for two segments; use at least 5")
        ends = self.offsets[1:] - (1 if _separated(self.tokens, self.offsets, self.tokenizer) else 0)
        lengths = ends - self.offsets[:-1]
        self.docs = np.flatnonzero(lengths >= 2)  # documents that can be split into A and B
        if len(self.docs) < 2:
            raise DataError(
                "mlm+nsp: the split needs at least two documents of two or more tokens "
                "(the random B comes from another document)"
            )
        self.starts, self.ends = self.offsets[:-1][self.docs], ends[self.docs]
        self.cum_lengths = np.cumsum(self.ends - self.starts)
        self.window = self.stride = self.budget  # nominal: pairs are drawn per document, not by window

    def _example(self, index, rng):
        d = int(np.searchsorted(self.cum_lengths, rng.integers(self.cum_lengths[-1]), side="right"))
        start, end = int(self.starts[d]), int(self.ends[d])
        total = min(self.budget, end - start)
        len_a = int(rng.integers(1, total))
        a0 = int(rng.integers(start, end - total + 1))
        a = self.tokens[a0 : a0 + len_a]
        is_random = bool(rng.random() < 0.5)
        if is_random:
            other = int(rng.integers(len(self.docs) - 1))
            other += other >= d  # any document but d
            o_start, o_end = int(self.starts[other]), int(self.ends[other])
            len_b = min(total - len_a, o_end - o_start)
            b0 = int(rng.integers(o_start, o_end - len_b + 1))
            b = self.tokens[b0 : b0 + len_b]
        else:
            b = self.tokens[a0 + len_a : a0 + total]
        tok = self.tokenizer
        ids = np.concatenate([[tok.cls_id], a, [tok.sep_id], b, [tok.sep_id]]).astype(np.int64)
        types = np.concatenate([np.zeros(len(a) + 2, np.int64), np.ones(len(b) + 1, np.int64)])
        inputs, labels = self.masker(ids, rng)
        n = self.seq_len
        return {
            "input_ids": pad_to(inputs, n, tok.pad_id),
            "token_type_ids": pad_to(types, n, 0),
            "attention_mask": pad_to(np.ones_like(ids), n, 0),
            "labels": pad_to(labels, n, IGNORE_INDEX),
            "next_sentence_label": np.array(int(is_random)),
        }


def _separated(tokens: np.ndarray, offsets: np.ndarray, tokenizer: Tokenizer) -> bool:
    """Whether every document ends with the EOS separator (as :func:`prepare` writes them)."""
    eos = tokenizer.eos_id
    return eos is not None and len(offsets) > 1 and bool(np.all(np.asarray(tokens[offsets[1:] - 1]) == eos))
