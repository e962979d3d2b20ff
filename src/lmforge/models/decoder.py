"""Decoder-only language model (GPT): P(x) = prod_t P(x_t | x_<t).

One causal :class:`~lmforge.nn.TransformerStack` and a linear head over the vocabulary, tied to
the token embedding by default. ``labels[b, t]`` is the target of position t (already shifted,
-100 ignored), so the loss is the mean next-token cross-entropy in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.nn import KVCache, LMHead, TransformerStack, cross_entropy, init_weights


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    cache: KVCache | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = TransformerStack(cfg, cfg.decoder_layers, causal=True)
        self.lm_head = LMHead(cfg)  # (with logit_softcap, the capped logits)
        init_weights(self, cfg, cfg.decoder_layers)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.tok_emb.weight

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None, device=None) -> KVCache:
        return self.transformer.new_cache(batch, max_len or self.config.max_positions, dtype, device)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, past + T)
        position_ids: torch.Tensor | None = None,  # (B, T)
        labels: torch.Tensor | None = None,  # (B, T) next-token targets, -100 ignored
        cache: KVCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        last_only: bool = False,  # logits of the last position only (generation)
        # (B, past + T) the document of each position in packed rows (``data.doc_mask``): attention
        # stays inside it; positions stay absolute. None: every position sees all earlier ones
        document_ids: torch.Tensor | None = None,
    ) -> LMOutput:
        out = self.transformer(
            input_ids,
            attention_mask,
            position_ids,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            document_ids=document_ids,
        )
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -1:] if last_only else h)  # (B, T, V)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return LMOutput(logits, loss, h, out.hidden_states, out.attentions, cache=cache)
