"""Steppers: one forward per decode step, the same interface for both generative families.

The decoding loops (:mod:`lmforge.infer.decoding`) see a :class:`Stepper`: :meth:`~Stepper.prefill`
runs the prompt (or encodes the source) and returns the logits of the first new position,
:meth:`~Stepper.step` feeds one token per row and returns the next logits, and beam search
repeats rows after the prefill (:meth:`~Stepper.expand`) and reorders them (:meth:`~Stepper.reorder`).

With ``use_cache=True`` the prompt runs once into a KV cache preallocated for
``P + max_new_tokens`` positions; ``use_cache=False`` re-runs the whole sequence every step: slow,
and the reference that the cached loop must reproduce.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lmforge.errors import ConfigError, LMForgeError
from lmforge.models.fast_decode import FastDecodeStep


class Stepper(Protocol):
    """What a decoding loop needs of a model: (B, V) logits one position at a time."""

    device: torch.device

    def prefill(self) -> torch.Tensor:
        """Run the prompt / source; the (B, V) logits of the first new position."""
        ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B,) tokens; the (B, V) logits of the next position."""
        ...

    def expand(self, n: int) -> None:
        """Repeat each row ``n`` times (beam search, after the prefill)."""
        ...

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search)."""
        ...


def check_context(model, n_positions: int, what: str) -> None:
    """Refuse ``n_positions`` beyond the context of a model with position embeddings."""
    cfg = model.config
    if cfg.positions != "none" and n_positions > cfg.max_positions:
        raise ConfigError(
            f"{what} needs {n_positions} positions but the model's context is max_positions={cfg.max_positions}; "
            f"lower max_new_tokens or shorten the prompt"
        )


class DecoderStepper:
    """Decoder-only: prompt (B, P) left-padded, + one token per step (the steps after the prompt
    through :class:`~lmforge.models.fast_decode.FastDecodeStep` when ``fast`` and the model allows)."""

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new: int,
        use_cache: bool,
        fast: bool = True,
    ):
        self.model, self.use_cache = model, use_cache
        B, P = input_ids.shape
        self.P, self.device = P, input_ids.device
        check_context(model, P + max_new, f"a prompt of {P} tokens + {max_new} new tokens")
        if attention_mask is not None:
            attention_mask = attention_mask.to(input_ids.device)
            if attention_mask.shape != input_ids.shape:
                raise LMForgeError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
            if not bool(attention_mask[:, -1].all()):
                raise LMForgeError("prompts must be left-padded for a decoder (the last column must be real tokens)")
            if bool(attention_mask.all()):
                attention_mask = None
        self.padded = attention_mask is not None
        total = P + max_new
        if self.padded:  # one mask buffer over all positions, sliced per step (never rebuilt)
            self.mask = torch.ones(B, total, dtype=torch.long, device=self.device)
            self.mask[:, :P] = attention_mask
            self.pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P) as HF does
            self.next_pos = attention_mask.long().sum(-1, keepdim=True)  # (B, 1)
        self.lean = None
        if use_cache:
            self.cache = model.new_cache(B, total)
            if fast and FastDecodeStep.supported(model):
                self.lean = FastDecodeStep(model)
                if self.padded:  # (B, 1, 1, total) bool, sliced per step
                    self.mask4 = self.mask.bool()[:, None, None, :]
        else:
            self.seq = torch.zeros(B, total, dtype=input_ids.dtype, device=self.device)
            self.seq[:, :P] = input_ids
            if self.padded:
                self.all_pos = torch.zeros(B, total, dtype=torch.long, device=self.device)
                self.all_pos[:, :P] = self.pos
        self.input_ids, self.cur = input_ids, P

    def prefill(self) -> torch.Tensor:
        out = self.model(
            self.input_ids,
            attention_mask=self.mask[:, : self.P] if self.padded else None,
            position_ids=self.pos if self.padded else None,
            cache=self.cache if self.use_cache else None,
            last_only=True,
        )
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        cur = self.cur = self.cur + 1
        if not self.use_cache:
            self.seq[:, cur - 1] = tokens
            if self.padded:
                self.all_pos[:, cur - 1 : cur] = self.next_pos
                self.next_pos = self.next_pos + 1
                return self.model(
                    self.seq[:, :cur],
                    attention_mask=self.mask[:, :cur],
                    position_ids=self.all_pos[:, :cur],
                    last_only=True,
                ).logits[:, -1]
            return self.model(self.seq[:, :cur], last_only=True).logits[:, -1]
        if self.lean is not None:
            if self.padded:
                pos = self.next_pos
                self.next_pos = pos + 1
                return self.lean(tokens, pos, self.cache, self.mask4[..., :cur])
            return self.lean(tokens, None, self.cache, None)
        if self.padded:
            pos = self.next_pos
            self.next_pos = pos + 1
            return self.model(
                tokens[:, None], attention_mask=self.mask[:, :cur], position_ids=pos, cache=self.cache, last_only=True
            ).logits[:, -1]
        return self.model(tokens[:, None], cache=self.cache, last_only=True).logits[:, -1]

    def expand(self, n: int) -> None:
        """Repeat each row n times (beam search after the prefill)."""
        index = torch.arange(self.input_ids.shape[0], device=self.device).repeat_interleave(n)
        self._select(index)

    def reorder(self, index: torch.Tensor) -> None:
        self._select(index)

    def _select(self, index: torch.Tensor) -> None:
        if self.use_cache:
            self.cache.reorder(index)
        else:
            self.seq = self.seq.index_select(0, index)
            if self.padded:
                self.all_pos = self.all_pos.index_select(0, index)
        if self.padded:
            self.mask = self.mask.index_select(0, index)
            self.next_pos = self.next_pos.index_select(0, index)
            if self.lean is not None:
                self.mask4 = self.mask.bool()[:, None, None, :]
        self.input_ids = self.input_ids.index_select(0, index)


class Seq2SeqStepper:
    """Encoder-decoder: encode the source once; the decoder starts from the start token."""

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new: int,
        use_cache: bool,
        start_id: int,
    ):
        self.model, self.use_cache = model, use_cache
        B = input_ids.shape[0]
        self.device = input_ids.device
        check_context(model, input_ids.shape[1], f"a source of {input_ids.shape[1]} tokens")
        check_context(model, 1 + max_new, f"{max_new} new tokens")
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
            if bool(attention_mask.all()):
                attention_mask = None
        self.src_mask = attention_mask
        self.enc = model.encode(input_ids, attention_mask).last_hidden_state  # (B, S, C)
        self.dec = torch.full((B, 1 + max_new), start_id, dtype=input_ids.dtype, device=self.device)
        self.cache = model.new_cache(B, 1 + max_new) if use_cache else None
        self.cur = 1

    def start_tokens(self) -> torch.Tensor:
        return self.dec[:, :1]

    def prefill(self) -> torch.Tensor:
        return self._run(self.dec[:, :1])

    def _run(self, dec_ids: torch.Tensor) -> torch.Tensor:
        return self.model(
            attention_mask=self.src_mask,
            decoder_input_ids=dec_ids,
            encoder_hidden_states=self.enc,
            cache=self.cache,
            last_only=True,
        ).logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        cur = self.cur = self.cur + 1
        if self.use_cache:
            return self._run(tokens[:, None])
        self.dec[:, cur - 1] = tokens
        return self._run(self.dec[:, :cur])

    def expand(self, n: int) -> None:
        self._select(torch.arange(self.enc.shape[0], device=self.device).repeat_interleave(n))

    def reorder(self, index: torch.Tensor) -> None:
        self._select(index)

    def _select(self, index: torch.Tensor) -> None:
        self.enc = self.enc.index_select(0, index)
        self.dec = self.dec.index_select(0, index)
        if self.src_mask is not None:
            self.src_mask = self.src_mask.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)
