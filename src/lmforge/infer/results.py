"""What inference returns: :class:`GenerateOutput` (tensors, from
:func:`~lmforge.infer.generate_ids`), :class:`Completion` (text, from :func:`~lmforge.infer.generate`)
and :class:`ScoreResult` (from :func:`~lmforge.infer.score`; corpus totals: :func:`summarize`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class GenerateOutput:
    """What :func:`generate_ids` returns."""

    tokens: torch.Tensor  # (B, N) new tokens; pad_id after a row finished
    lengths: torch.Tensor  # (B,) new tokens per row, the EOS included when one was generated
    logprobs: torch.Tensor | None = None  # (B, N) model log P of each chosen token (before sampling processors)
    scores: torch.Tensor | None = None  # (B,) beam search: the winning hypothesis' length-normalised score
    finished: torch.Tensor | None = None  # (B,) bool: ended by EOS / a stop (False: hit max_new_tokens)

    def token_lists(self) -> list[list[int]]:
        """Each row's new tokens without the padding after its end."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths.tolist())]


@dataclass
class Completion:
    """One prompt's completion, as :func:`generate` returns it."""

    prompt: str
    text: str  # the generated text (stop string and EOS excluded)
    token_ids: list[int] = field(default_factory=list)  # generated ids (EOS included if generated)
    finish_reason: str = "length"  # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    score: float | None = None  # beam search score

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        d = {
            "prompt": self.prompt,
            "text": self.text,
            "n_tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
        }
        if self.score is not None:
            d["score"] = self.score
        return d


LN2 = math.log(2.0)


@dataclass
class ScoreResult:
    """The score of one text (or token sequence)."""

    logprob: float  # sum of log P of the scored tokens, nats
    n_tokens: int  # tokens scored
    token_ids: list[int] = field(default_factory=list)  # the scored tokens
    token_logprobs: list[float] = field(default_factory=list)  # their log P, nats
    n_bytes: int | None = None  # UTF-8 bytes of the text (for bits per byte)
    text: str | None = None
    kind: str = "causal"  # "causal" log P(x); "pll" pseudo-log-likelihood; "conditional" log P(y | x)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per scored token (nats)."""
        return -self.logprob / self.n_tokens if self.n_tokens else float("nan")

    @property
    def perplexity(self) -> float:
        """exp(nll); the pseudo-perplexity for a PLL score."""
        return math.exp(self.nll) if self.n_tokens else float("nan")

    @property
    def bits_per_byte(self) -> float | None:
        if not self.n_bytes:
            return None
        return -self.logprob / (LN2 * self.n_bytes)

    def to_dict(self, per_token: bool = False) -> dict:
        d = {}
        if self.text is not None:
            d["text"] = self.text
        d.update(kind=self.kind, logprob=self.logprob, n_tokens=self.n_tokens, nll=self.nll, perplexity=self.perplexity)
        if self.n_bytes is not None:
            d["n_bytes"] = self.n_bytes
            d["bits_per_byte"] = self.bits_per_byte
        if per_token:
            d["token_ids"] = list(self.token_ids)
            d["token_logprobs"] = list(self.token_logprobs)
        return d


def summarize(results: Sequence[ScoreResult]) -> dict:
    """Corpus totals: summed log P, tokens, bytes; perplexity and bits per byte of the whole."""
    lp = sum(r.logprob for r in results)
    n = sum(r.n_tokens for r in results)
    nb = sum(r.n_bytes or 0 for r in results)
    return {
        "texts": len(results),
        "logprob": lp,
        "n_tokens": n,
        "nll": -lp / n if n else float("nan"),
        "perplexity": math.exp(-lp / n) if n else float("nan"),
        "n_bytes": nb,
        "bits_per_byte": -lp / (LN2 * nb) if nb else None,
    }
