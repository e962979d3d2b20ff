"""Encoder-decoder model: P(y | x) = prod_t P(y_t | y_<t, x).

A bidirectional encoder stack reads the source; a causal decoder stack with cross-attention
writes the target. Token embeddings are shared by encoder, decoder and (tied) LM head
(``share_embeddings=False``: the decoder has its own, which the tied head then reads).
``labels`` are aligned with ``decoder_input_ids`` (the target shifted right behind a start token).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models.decoder import LMOutput
from lmforge.nn import KVCache, LMHead, TransformerStack, cross_entropy, init_weights


class EncoderDecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)  # the encoder's (and, shared, the decoder's)
        self.encoder = TransformerStack(cfg, cfg.encoder_layers, causal=False, tok_emb=self.shared)
        self.decoder = TransformerStack(
            cfg, cfg.decoder_layers, causal=True, cross=True, tok_emb=self.shared if cfg.share_embeddings else None
        )
        self.lm_head = LMHead(cfg)
        init_weights(self, cfg, cfg.encoder_layers + cfg.decoder_layers)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.decoder.tok_emb.weight

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None, device=None) -> KVCache:
        return self.decoder.new_cache(batch, max_len or self.config.max_positions, dtype, device)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ):
        return self.encoder(
            input_ids, attention_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from targets: a start token, then the targets without the last (-100 -> pad)."""
        start = self.config.decoder_start_id
        if start is None:
            start = self.config.bos_id if self.config.bos_id is not None else 0
        pad = self.config.pad_id if self.config.pad_id is not None else 0
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
        return shifted

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S) source
        attention_mask: torch.Tensor | None = None,  # (B, S)
        decoder_input_ids: torch.Tensor | None = None,  # (B, T)
        decoder_attention_mask: torch.Tensor | None = None,  # (B, past + T)
        labels: torch.Tensor | None = None,  # (B, T) targets aligned with decoder_input_ids
        encoder_hidden_states: torch.Tensor | None = None,  # reuse an encoding (generation)
        cache: KVCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        last_only: bool = False,
    ) -> LMOutput:
        enc_attn = enc_hidden = None
        if encoder_hidden_states is None:
            enc = self.encode(input_ids, attention_mask, output_attentions, output_hidden_states)
            encoder_hidden_states, enc_attn, enc_hidden = enc.last_hidden_state, enc.attentions, enc.hidden_states
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels")
            decoder_input_ids = self.shift_right(labels)
        dec = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            cache=cache,
            context=encoder_hidden_states,
            context_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        h = dec.last_hidden_state
        logits = self.lm_head(h[:, -1:] if last_only else h)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return LMOutput(
            logits,
            loss,
            h,
            dec.hidden_states,
            dec.attentions,
            dec.cross_attentions,
            cache,
            encoder_hidden_states,
            enc_hidden,
            enc_attn,
        )
