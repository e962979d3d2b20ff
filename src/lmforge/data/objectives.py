"""Pretraining objectives as resumable batch samplers over token shards.

=========  ==================================================================  ==========================
objective  one example                                                         batch keys
=========  ==================================================================  ==========================
causal     a window of T+1 packed tokens; labels[t] = input_ids[t+1]           input_ids, labels
           (doc_mask: the document of each position, to attend within it)    (+ document_ids)
mlm        [CLS] window [SEP]; 15% of tokens chosen: 80% [MASK], 10% random,   input_ids, attention_mask,
           10% kept (BERT); labels -100 where not chosen                       labels
mlm+nsp    [CLS] A [SEP] B [SEP]: B follows A (label 0) or comes from another  input_ids, token_type_ids,
           document (label 1), half each; plus MLM on the pair                 attention_mask, labels,
                                                                               next_sentence_label
span       T5 span corruption: 15% of tokens in spans of mean length 3, each   input_ids, attention_mask,
           replaced by a sentinel; the target lists sentinel + span            labels, decoder_input_ids
infill     BART text infilling: spans of Poisson(3) length (30% of tokens)     input_ids, attention_mask,
           each replaced by one [MASK]; the target is the original text        labels, decoder_input_ids
=========  ==================================================================  ==========================

Conventions. Labels are *already aligned with the logits*: the loss is cross-entropy of
``logits[:, t]`` against ``labels[:, t]`` with no further shift, and ``-100`` is ignored. For the
causal objective this means labels are the inputs shifted left by one (nanoGPT style); for the
encoder-decoder objectives ``decoder_input_ids`` are the labels shifted right behind
``decoder_start_id`` (default: the pad id, as in T5). Documents are packed back to back,
separated by EOS.

Randomness and resuming. Example ``i`` of the run (counting across batches) draws everything from
its own generator ``np.random.default_rng([seed, i])``, never from global state. A sampler's
position is therefore just ``step``: ``state_dict()`` / ``load_state_dict()`` resume exactly,
and with ``world_size`` ranks, rank ``r`` builds rows ``[r*B/w, (r+1)*B/w)`` of the very global
batch a single process would draw, so data-parallel runs see the same data as single-process ones.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from lmforge.data.shards import Dataset, open_dataset
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer, special_id

IGNORE_INDEX = -100
ORDERS = ("random", "sequential")


class Sampler:
    """Base class: turns example indices into batches, owns the position and rank slicing.

    ``order="random"`` draws windows uniformly with replacement; ``"sequential"`` walks
    non-overlapping windows from the start (epoch after epoch), e.g. for evaluation.
    Subclasses set ``window`` (tokens consumed per example) and implement ``_example``.
    """

    objective = ""
    window = 0  # tokens of the stream one example reads
    stride = 0  # distance between sequential windows (== window unless windows overlap)
    orders = ORDERS

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        tokenizer: Tokenizer,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        order: str = "random",
    ):
        if batch_size <= 0 or seq_len <= 0:
            raise ConfigError(f"batch_size / seq_len: must be positive, got {batch_size} / {seq_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank: {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ConfigError(
                f"batch_size: {batch_size} is not divisible by world_size={world_size}; use a multiple of {world_size}"
            )
        if order not in self.orders:
            raise ConfigError(
                f"order: {order!r} is not one of {', '.join(self.orders)} for objective {self.objective!r}"
            )
        self.tokens = np.asarray(tokens)  # a plain view of the memmap: slicing it is much cheaper
        self.offsets = np.asarray(offsets)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.order = order
        self.step = 0

    def _check_length(self) -> None:
        """Call once ``window`` is known: the split must hold at least one example."""
        self.stride = self.stride or self.window
        if self.window <= 0 or len(self.tokens) < self.window:
            raise ConfigError(
                f"seq_len: {self.seq_len} needs {self.window} tokens per example but the split has "
                f"{len(self.tokens)}; use a shorter seq_len or more data"
            )

    # ---- position ---------------------------------------------------------------------------
    @property
    def windows_per_epoch(self) -> int:
        return max(1, (len(self.tokens) - self.window) // self.stride + 1)

    @property
    def batches_per_epoch(self) -> int:
        """Whole global batches per pass over the split (the last partial one is not counted)."""
        return max(1, self.windows_per_epoch // self.batch_size)

    @property
    def epoch(self) -> int:
        return self.step * self.batch_size // self.windows_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """The position: enough to resume exactly (``epoch`` / ``offset`` are informative)."""
        examples = self.step * self.batch_size
        return {
            "objective": self.objective,
            "seed": self.seed,
            "step": self.step,
            "epoch": self.epoch,
            "offset": examples % self.windows_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("objective") != self.objective:
            raise ConfigError(
                f"objective: the saved data position is for {state.get('objective')!r}, not {self.objective!r}"
            )
        self.seed = int(state["seed"])
        self.step = int(state["step"])

    # ---- batches ----------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's rows of the next global batch, as int64 tensors."""
        local = self.batch_size // self.world_size
        first = self.step * self.batch_size + self.rank * local
        rows = [self._example(i, np.random.default_rng([self.seed, i])) for i in range(first, first + local)]
        self.step += 1
        return {k: torch.from_numpy(np.stack([r[k] for r in rows]).astype(np.int64)) for k in rows[0]}

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _window(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The ``window`` stream tokens of example ``index``."""
        if self.order == "random":
            start = int(rng.integers(0, len(self.tokens) - self.window + 1))
        else:
            start = index % self.windows_per_epoch * self.stride
        return np.asarray(self.tokens[start : start + self.window], dtype=np.int64)

    def _example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _ids(token_id: int | None) -> np.ndarray:
    """A special token as a 0- or 1-element id array (absent tokens are simply left out)."""
    return np.array([] if token_id is None else [token_id], dtype=np.int64)


def _pad(ids: np.ndarray, length: int, value: int) -> np.ndarray:
    return np.concatenate([ids, np.full(length - len(ids), value, dtype=np.int64)])


def _require(tokenizer: Tokenizer, objective: str, *roles: str) -> None:
    missing = [r for r in roles if special_id(tokenizer, r) is None]
    if missing:
        raise ConfigError(
            f"objective: {objective!r} needs the special token(s) {', '.join(missing)}, which this "
            f"{tokenizer.kind} tokenizer lacks; train one with lmforge tokenizer train"
        )


# ---- causal LM ------------------------------------------------------------------------------------
class CausalSampler(Sampler):
    """Packed windows for next-token prediction: ``labels[t] == input_ids[t + 1]`` of the stream.

    ``doc_mask=True`` adds ``document_ids``: the document of each input position, counting the EOS
    separators before it and at it (an EOS opens the next document, as a scored or generated text
    starts after one), so that the model's attention does not cross a document boundary
    (:func:`lmforge.nn.document_ids_from_separators` computes the same from ``input_ids``).
    """

    objective = "causal"

    def __init__(self, tokens, offsets, tokenizer, batch_size, seq_len, doc_mask: bool = False, **kw):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        self.window, self.stride = seq_len + 1, seq_len  # sequential windows overlap by the one label token
        self._check_length()
        self.doc_mask = bool(doc_mask)
        if self.doc_mask:
            _require(tokenizer, "causal with doc_mask", "eos")

    def _example(self, index, rng):
        w = self._window(index, rng)
        example = {"input_ids": w[:-1], "labels": w[1:]}
        if self.doc_mask:
            example["document_ids"] = np.cumsum(w[:-1] == self.tokenizer.eos_id)
        return example


# ---- masked LM ------------------------------------------------------------------------------------------
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
        _require(tokenizer, "mlm", "mask")
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
        self,
        tokens,
        offsets,
        tokenizer,
        batch_size,
        seq_len,
        *,
        mlm_probability: float = 0.15,
        whole_word: bool = False,
        **kw,
    ):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        self.masker = TokenMasker(tokenizer, mlm_probability, whole_word)
        self.prefix, self.suffix = _ids(tokenizer.cls_id), _ids(tokenizer.sep_id)
        self.window = seq_len - len(self.prefix) - len(self.suffix)
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
        self,
        tokens,
        offsets,
        tokenizer,
        batch_size,
        seq_len,
        *,
        mlm_probability: float = 0.15,
        whole_word: bool = False,
        **kw,
    ):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        _require(tokenizer, self.objective, "cls", "sep", "pad")
        self.masker = TokenMasker(tokenizer, mlm_probability, whole_word)
        self.budget = seq_len - 3  # room for A and B
        if self.budget < 2:
            raise ConfigError(f"seq_len: {seq_len} leaves no room for two segments; use at least 5")
        ends = offsets[1:] - (1 if _separated(tokens, offsets, tokenizer) else 0)
        lengths = ends - offsets[:-1]
        self.docs = np.flatnonzero(lengths >= 2)  # documents that can be split into A and B
        if len(self.docs) < 2:
            raise DataError(
                "mlm+nsp: the split needs at least two documents of two or more tokens "
                "(the random B comes from another document)"
            )
        self.starts, self.ends = offsets[:-1][self.docs], ends[self.docs]
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
            "input_ids": _pad(inputs, n, tok.pad_id),
            "token_type_ids": _pad(types, n, 0),
            "attention_mask": _pad(np.ones_like(ids), n, 0),
            "labels": _pad(labels, n, IGNORE_INDEX),
            "next_sentence_label": np.array(int(is_random)),
        }


def _separated(tokens: np.ndarray, offsets: np.ndarray, tokenizer: Tokenizer) -> bool:
    """Whether every document ends with the EOS separator (as :func:`prepare` writes them)."""
    eos = tokenizer.eos_id
    return eos is not None and len(offsets) > 1 and bool(np.all(np.asarray(tokens[offsets[1:] - 1]) == eos))


# ---- denoising (encoder-decoder) ------------------------------------------------------------------------------
def random_spans_noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask: ``round(length * density)`` noise tokens in ``round(noise / mean)`` spans,
    both noise and non-noise cut into random positive lengths; starts with non-noise."""
    num_noise, num_spans = _span_counts(length, noise_density, mean_span_length)
    noise = _random_partition(num_noise, num_spans, rng)
    keep = _random_partition(length - num_noise, num_spans, rng)
    return np.repeat(np.arange(2 * num_spans) % 2 == 1, np.stack([keep, noise], axis=1).ravel())


def _span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(1, min(int(round(num_noise / mean_span_length)), num_noise, length - num_noise))
    return num_noise, num_spans


def _random_partition(n: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items cut into ``parts`` positive lengths, every cut equally likely."""
    cuts = np.sort(rng.permutation(n - 1)[: parts - 1]) + 1
    return np.diff(np.concatenate([[0], cuts, [n]]))


def collapse_spans(ids: np.ndarray, mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Replace the k-th run of masked positions by the single token ``fill[k]``."""
    first = mask.copy()
    first[1:] &= ~mask[:-1]
    out = ids.copy()
    out[first] = fill[: int(first.sum())]
    return out[~mask | first]


class SpanSampler(Sampler):
    """T5 span corruption. The stream window is sized so the encoder input (kept tokens + one
    sentinel per span + EOS) fills ``seq_len``; targets are ``<extra_id_k> span_k ...`` + EOS."""

    objective = "span"

    def __init__(
        self,
        tokens,
        offsets,
        tokenizer,
        batch_size,
        seq_len,
        *,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        decoder_start_id: int | None = None,
        **kw,
    ):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        _check_noise(noise_density, mean_span_length)
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.decoder_start_id = _decoder_start(tokenizer, decoder_start_id)
        self.suffix = _ids(tokenizer.eos_id)
        self.window = _t5_window(seq_len, noise_density, mean_span_length, len(self.suffix))
        self._check_length()
        spans = _span_counts(self.window, noise_density, mean_span_length)[1]
        self.sentinels = np.array(tokenizer.sentinel_ids, dtype=np.int64)
        if len(self.sentinels) < spans:
            raise ConfigError(
                f"objective: 'span' needs {spans} sentinel tokens (<extra_id_N>) per example at "
                f"seq_len={seq_len}, the tokenizer has {len(self.sentinels)}; train it with "
                f"--sentinels {max(spans, 100)} or use a shorter seq_len"
            )

    def _example(self, index, rng):
        w = self._window(index, rng)
        noise = random_spans_noise_mask(len(w), self.noise_density, self.mean_span_length, rng)
        inputs = np.concatenate([collapse_spans(w, noise, self.sentinels), self.suffix])
        labels = np.concatenate([collapse_spans(w, ~noise, self.sentinels), self.suffix])
        return _seq2seq(inputs, labels, self.seq_len, self.tokenizer.pad_id, self.decoder_start_id)


def _t5_window(seq_len: int, noise_density: float, mean_span_length: float, n_suffix: int) -> int:
    """The longest stream window whose corrupted form (kept + sentinels + EOS) fits in ``seq_len``."""

    def input_length(n: int) -> int:
        num_noise, num_spans = _span_counts(n, noise_density, mean_span_length)
        return n - num_noise + num_spans + n_suffix

    n = 2
    while input_length(n + 1) <= seq_len:
        n += 1
    return n if input_length(n) <= seq_len else 0


class InfillSampler(Sampler):
    """BART text infilling: ``<s> window </s>`` with spans of Poisson(lambda) length (0 inserts a
    mask) covering ``noise_density`` of the tokens, each span replaced by one mask token. The
    labels are the uncorrupted ``<s> window </s>``; the encoder input is padded to ``seq_len``."""

    objective = "infill"

    def __init__(
        self,
        tokens,
        offsets,
        tokenizer,
        batch_size,
        seq_len,
        *,
        noise_density: float = 0.3,
        poisson_lambda: float = 3.0,
        decoder_start_id: int | None = None,
        **kw,
    ):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        _require(tokenizer, self.objective, "mask")
        _check_noise(noise_density, poisson_lambda)
        self.noise_density, self.poisson_lambda = noise_density, poisson_lambda
        self.decoder_start_id = _decoder_start(tokenizer, decoder_start_id)
        self.prefix, self.suffix = _ids(tokenizer.bos_id), _ids(tokenizer.eos_id)
        self.window = seq_len - len(self.prefix) - len(self.suffix)
        self._check_length()

    def _example(self, index, rng):
        w = self._window(index, rng)
        inputs = np.concatenate([self.prefix, self.infill(w, rng), self.suffix])
        labels = np.concatenate([self.prefix, w, self.suffix])
        return _seq2seq(inputs, labels, self.seq_len, self.tokenizer.pad_id, self.decoder_start_id)

    def infill(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``ids`` with spans replaced by single mask tokens (empty spans insert one)."""
        n = len(ids)
        lengths = _poisson_lengths(int(round(n * self.noise_density)), self.poisson_lambda, rng)
        lengths = lengths[: n - int(lengths.sum()) + 1]  # room for a kept token between consecutive spans
        if len(lengths) == 0:
            return ids.copy()
        # kept tokens before, between (at least one) and after the spans, at random
        spare = n - int(lengths.sum()) - (len(lengths) - 1)
        gaps = np.diff(np.concatenate([[0], np.sort(rng.integers(0, spare + 1, len(lengths))), [spare]]))
        gaps[1:-1] += 1
        segments = np.empty(2 * len(lengths) + 1, dtype=np.int64)
        segments[0::2], segments[1::2] = gaps, lengths
        noise = np.repeat(np.arange(len(segments)) % 2 == 1, segments)
        return np.insert(ids[~noise], np.cumsum(gaps[:-1]), self.tokenizer.mask_id)


def _poisson_lengths(total: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    """Span lengths drawn from Poisson(lam) until they cover ``total`` tokens (the last one cut)."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    draws = rng.poisson(lam, size=total + 1)
    while draws.sum() < total:  # only when many zeros were drawn
        draws = np.concatenate([draws, rng.poisson(lam, size=total + 1)])
    last = int(np.searchsorted(np.cumsum(draws), total))
    lengths = draws[: last + 1].astype(np.int64)
    lengths[-1] -= lengths.sum() - total
    return lengths


def _check_noise(noise_density: float, span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ConfigError(f"noise_density: must be in (0, 1), got {noise_density}")
    if span_length <= 0:
        raise ConfigError(f"mean span length: must be positive, got {span_length}")


def _decoder_start(tokenizer: Tokenizer, decoder_start_id: int | None) -> int:
    start = tokenizer.pad_id if decoder_start_id is None else decoder_start_id
    if start is None:
        raise ConfigError("decoder_start_id: the tokenizer has no pad token to start the decoder with; pass one")
    return start


def _seq2seq(
    inputs: np.ndarray, labels: np.ndarray, seq_len: int, pad_id: int | None, decoder_start_id: int
) -> dict[str, np.ndarray]:
    """Encoder inputs padded to ``seq_len``; decoder inputs = labels shifted right behind the start id."""
    pad = decoder_start_id if pad_id is None else pad_id
    return {
        "input_ids": _pad(inputs, seq_len, pad),
        "attention_mask": _pad(np.ones_like(inputs), seq_len, 0),
        "labels": labels,
        "decoder_input_ids": np.concatenate([[decoder_start_id], labels[:-1]]).astype(np.int64),
    }


# ---- factory -----------------------------------------------------------------------------------------------
from lmforge.data.permutation import PermutationSampler  # noqa: E402  (XLNet's plm, built on Sampler above)

SAMPLERS: dict[str, type[Sampler]] = {
    "causal": CausalSampler,
    "mlm": MLMSampler,
    "mlm+nsp": NSPSampler,
    "span": SpanSampler,
    "infill": InfillSampler,
    "plm": PermutationSampler,
}
OBJECTIVES = tuple(SAMPLERS)
_OPTIONS = {
    "causal": ("doc_mask",),
    "mlm": ("mlm_probability", "whole_word"),
    "mlm+nsp": ("mlm_probability", "whole_word"),
    "span": ("noise_density", "mean_span_length", "decoder_start_id"),
    "infill": ("noise_density", "poisson_lambda", "decoder_start_id"),
    "plm": ("plm_k",),
}


def make_batches(
    objective: str,
    dataset: Dataset | str | os.PathLike,
    batch_size: int,
    seq_len: int,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    split: str = "train",
    *,
    rank: int = 0,
    world_size: int = 1,
    order: str = "random",
    **options: Any,
) -> Sampler:
    """A sampler of ``objective`` batches over ``split`` of a dataset (object or directory).

    Options: causal: ``doc_mask`` (False; True adds ``document_ids``); mlm / mlm+nsp:
    ``mlm_probability`` (0.15), ``whole_word`` (False); span: ``noise_density`` (0.15),
    ``mean_span_length`` (3), ``decoder_start_id`` (pad); infill: ``noise_density`` (0.3),
    ``poisson_lambda`` (3), ``decoder_start_id`` (pad); plm: ``plm_k`` (6, :mod:`lmforge.data.permutation`).
    """
    if objective not in SAMPLERS:
        raise ConfigError(f"objective: unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    unknown = sorted(set(options) - set(_OPTIONS[objective]))
    if unknown:
        known = ", ".join(_OPTIONS[objective]) or "none"
        raise ConfigError(f"{unknown[0]}: not an option of objective {objective!r} (options: {known})")
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset, tokenizer)
    elif tokenizer is not None and tokenizer.fingerprint != dataset.tokenizer.fingerprint:
        raise DataError(
            f"{dataset.path}: prepared with tokenizer {dataset.tokenizer.fingerprint}, "
            f"not the given {tokenizer.fingerprint}; re-run lmforge prepare with this tokenizer"
        )
    tokens = dataset.split(split)
    tokenizer = dataset.tokenizer if tokenizer is None else tokenizer
    return SAMPLERS[objective](
        tokens,
        dataset.offsets[split],
        tokenizer,
        batch_size,
        seq_len,
        seed=seed,
        rank=rank,
        world_size=world_size,
        order=order,
        **options,
    )
