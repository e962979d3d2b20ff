"""Encoder-only masked language model (BERT): max sum_i log P(x_i | x_\\i).

A bidirectional :class:`~lmforge.nn.TransformerStack` with segment embeddings, then
- the MLM head: transform (dense, activation, norm) and a decoder tied to the token embedding;
- the pooler (dense + tanh over the first token, [CLS]) and the next-sentence classifier.
Given MLM ``labels`` (-100 where not masked) and ``next_sentence_label`` (0 = B follows A,
1 = random B, as in HF) the loss is the sum of both. With labels the MLM head runs on the labelled
positions only (15% of them in pretraining: a fifth of the step's FLOPs saved at vocabulary 8192),
and ``logits`` holds their rows in order; ``full_logits=True`` gives every position's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.nn import LMHead, TransformerStack, activation_fn, cross_entropy, init_weights, make_norm


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, C)
    logits: torch.Tensor | None = None  # (B, T, V) MLM logits; (M, V) of the M labelled positions given labels
    nsp_logits: torch.Tensor | None = None  # (B, 2)
    pooled: torch.Tensor | None = None  # (B, C)
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class MLMHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = activation_fn("gelu" if cfg.gated else cfg.activation)
        self.norm = make_norm(cfg)
        self.decoder = LMHead(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(h))))


class Pooler(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # the first ([CLS]) token


class EncoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.encoder = TransformerStack(cfg, cfg.encoder_layers, causal=False, segments=True)
        self.mlm = MLMHead(cfg) if cfg.mlm_head else None
        self.pooler = Pooler(cfg) if cfg.has_pooler else None
        self.nsp = nn.Linear(cfg.d_model, 2, bias=cfg.bias) if cfg.nsp_head else None
        init_weights(self, cfg, cfg.encoder_layers)
        if self.mlm is not None and cfg.tie_embeddings:
            self.mlm.decoder.weight = self.encoder.tok_emb.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, T) original tokens at masked positions, -100 elsewhere
        next_sentence_label: torch.Tensor | None = None,  # (B,)
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        full_logits: bool = False,
    ) -> EncoderOutput:
        out = self.encoder(
            input_ids,
            attention_mask,
            position_ids,
            token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        logits = mlm_loss = None
        if self.mlm is not None:
            if labels is not None and not full_logits:
                picked = labels != -100  # (B, T)
                logits = self.mlm(h[picked])  # (M, V)
                labels = labels[picked]
            else:
                logits = self.mlm(h)  # (B, T, V)
            if labels is not None:
                mlm_loss = cross_entropy(logits, labels)
        pooled = self.pooler(h) if self.pooler is not None else None
        nsp_logits = self.nsp(pooled) if self.nsp is not None else None
        nsp_loss = (
            cross_entropy(nsp_logits, next_sentence_label)
            if next_sentence_label is not None and nsp_logits is not None
            else None
        )
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(losses) if losses else None
        return EncoderOutput(h, logits, nsp_logits, pooled, loss, mlm_loss, nsp_loss, out.hidden_states, out.attentions)
