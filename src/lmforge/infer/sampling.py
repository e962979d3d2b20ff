"""Choosing the next token: the logit processors and the chooser that applies them.

Sampling follows HF's order: repetition penalty on the raw logits (a logit ``l`` of a token already
present becomes ``l / penalty`` if positive, ``l * penalty`` if negative), then temperature, top-k,
top-p, then a draw from the softmax with a private ``torch.Generator`` (:func:`make_generator`;
the global RNG is never touched). Greedy takes the argmax after the repetition penalty.
"""

from __future__ import annotations

import torch

from lmforge.errors import LMForgeError
from lmforge.infer.options import SamplingOptions


def apply_repetition_penalty(logits: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF semantics: for tokens already present, positive logits are divided by ``penalty`` and
    negative ones multiplied by it (so penalty > 1 always makes them less likely)."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(present, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (HF): keep the smallest set of most likely tokens whose probability reaches
    ``p``; always keep the most likely one."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p)
    remove[..., -1:] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


class TokenChooser:
    """Picks the next token from (B, V) logits: greedy or sampled, with the processors above.

    Keeps the (B, V) set of tokens seen so far for the repetition penalty: :meth:`init_present`
    from the prompt, :meth:`note` after each step, :meth:`reorder` when beam search reorders rows."""

    def __init__(
        self,
        do_sample: bool,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        repetition_penalty: float,
        generator: torch.Generator | None,
    ):
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_k = top_k if top_k and top_k > 0 else None
        self.top_p = top_p if top_p is not None and top_p < 1.0 else None
        self.penalty = repetition_penalty if repetition_penalty and repetition_penalty != 1.0 else None
        self.generator = generator
        self.present: torch.Tensor | None = None  # (B, V) bool, tokens seen so far (repetition penalty)

    @classmethod
    def from_options(cls, options: SamplingOptions, generator: torch.Generator | None) -> TokenChooser:
        """Sampled when ``options.temperature`` > 0, else greedy."""
        o = options
        return cls(o.temperature > 0, o.temperature, o.top_k, o.top_p, o.repetition_penalty, generator)

    def init_present(self, ids: torch.Tensor, mask: torch.Tensor | None, vocab: int) -> None:
        if self.penalty is None:
            return
        B = ids.shape[0]
        present = torch.zeros(B, vocab + 1, dtype=torch.bool, device=ids.device)
        idx = ids if mask is None else ids.masked_fill(mask == 0, vocab)  # padding -> a spare column
        present.scatter_(1, idx, True)
        self.present = present[:, :vocab]

    def note(self, tokens: torch.Tensor) -> None:
        if self.present is not None:
            self.present.scatter_(1, tokens[:, None], True)

    def reorder(self, index: torch.Tensor) -> None:
        if self.present is not None:
            self.present = self.present.index_select(0, index)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        if self.penalty is not None:
            logits = apply_repetition_penalty(logits, self.present, self.penalty)
        return logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = self.process(logits)
        if not self.do_sample:
            return logits.argmax(dim=-1)
        logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, self.top_p)
        probs = logits.softmax(dim=-1)
        if not bool(torch.isfinite(probs).all()):  # a diverged model: nothing to draw from
            raise LMForgeError("the model's logits are not finite (NaN or inf): no token can be sampled")
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A private RNG on ``device``: seeded from ``seed``, or from the OS when ``seed`` is None."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g
