"""Denoising samplers for encoder-decoders: T5's span corruption and BART's text infilling."""

from __future__ import annotations

import numpy as np

from lmforge.data.sampler import Sampler, pad_to, require_tokens, token_array
from lmforge.errors import ConfigError
from lmforge.tokenizer import Tokenizer


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
        *args,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        decoder_start_id: int | None = None,
        **kw,
    ):  # args, kw: the base's (tokens, offsets, tokenizer, batch_size, seq_len, seed, ...)
        super().__init__(*args, **kw)
        _check_noise(noise_density, mean_span_length)
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.decoder_start_id = _decoder_start(self.tokenizer, decoder_start_id)
        self.suffix = token_array(self.tokenizer.eos_id)
        self.window = _t5_window(self.seq_len, noise_density, mean_span_length, len(self.suffix))
        self._check_length()
        spans = _span_counts(self.window, noise_density, mean_span_length)[1]
        self.sentinels = np.array(self.tokenizer.sentinel_ids, dtype=np.int64)
        if len(self.sentinels) < spans:
            raise ConfigError(
                f"objective: 'span' needs {spans} sentinel tokens (<extra_id_N>) per example at "
                f"seq_len={self.seq_len}, the tokenizer has {len(self.sentinels)}; train it with "
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
        self, *args, noise_density: float = 0.3, poisson_lambda: float = 3.0, decoder_start_id: int | None = None, **kw
    ):  # args, kw: the base's (tokens, offsets, tokenizer, batch_size, seq_len, seed, ...)
        super().__init__(*args, **kw)
        require_tokens(self.tokenizer, self.objective, "mask")
        _check_noise(noise_density, poisson_lambda)
        self.noise_density, self.poisson_lambda = noise_density, poisson_lambda
        self.decoder_start_id = _decoder_start(self.tokenizer, decoder_start_id)
        self.prefix, self.suffix = token_array(self.tokenizer.bos_id), token_array(self.tokenizer.eos_id)
        self.window = self.seq_len - len(self.prefix) - len(self.suffix)
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
        "input_ids": pad_to(inputs, seq_len, pad),
        "attention_mask": pad_to(np.ones_like(inputs), seq_len, 0),
        "labels": labels,
        "decoder_input_ids": np.concatenate([[decoder_start_id], labels[:-1]]).astype(np.int64),
    }
