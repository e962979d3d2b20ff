"""XLNet (Yang et al. 2019): permutation language modelling with two-stream attention.

For a factorisation order z of the positions (a permutation), maximise
sum_t log P(x_{z_t} | x_{z_<t}): every token is predicted from a random subset of the others on
both sides, so one model gets bidirectional context without [MASK] tokens. The order is not
applied to the input (tokens keep their positions); it is a mask, ``perm_mask[b, i, j] = 1`` when
position i may not see position j, and ``target_mapping[b, p, i] = 1`` picks the P positions
predicted. Each layer runs two streams that share all weights:

- the **content stream** h: position i sees the tokens it may see *and itself* (what later
  positions of the order read as context);
- the **query stream** g: position i sees the same tokens but *not itself*, starting from a learned
  ``mask_emb`` instead of its token, so that predicting x_i never reads x_i.

Attention scores follow Transformer-XL: content (q + r_w_bias) . k, plus position
(q + r_r_bias) . W_r r_{i-j} with r a sinusoid of the relative distance i - j, plus segment
(q + r_s_bias) . seg_embed[same or different segment] when ``token_type_ids`` are given; scaled by
1 / sqrt(D). Blocks are post-norm: LN(x + attn(x)), then LN(x + FFN(x)); no final norm. The head
``lm_loss`` is tied to the token embedding.

Memory (Transformer-XL's segment recurrence): ``mems`` holds, per layer, the content-stream inputs
of M earlier positions (B, M, C); both streams attend to them as extra keys (visible to every
position, relative distances counted across them), and ``mem_len > 0`` returns the memory for the
next call (the last ``mem_len`` positions of memory + this call, detached). lmforge uses it in
inference only: training and scoring cut the text into independent windows.

Parameter names follow HF's ``XLNetLMHeadModel`` (``transformer.word_embedding``,
``transformer.mask_emb``, ``transformer.layer.N.rel_attn.{q,k,v,o,r,...}``, ``...ff.layer_1``,
``lm_loss``); HF keeps q, k, v, o, r as (C, H, D) tensors, lmforge as linear layers
(:mod:`lmforge.interop.hf_xlnet` reshapes them). One difference: a query that may see no position
at all gets an empty context (a zero attention output) here, where HF's -1e30 added to every
score spreads it evenly over all positions, its own token included.

Shapes: B batch, T positions, P predictions, C = d_model, H heads, D head size, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.nn import LMHead, activation_fn, cross_entropy, init_weights, make_norm, sinusoids


@dataclass
class XLNetOutput:
    logits: torch.Tensor  # (B, P, V) at target_mapping's predictions (query stream); else (B, T, V) (content)
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None  # (B, P, C) or (B, T, C), the stream the logits read
    hidden_states: tuple[torch.Tensor, ...] | None = None  # content stream: embeddings, then each layer's
    mems: tuple[torch.Tensor, ...] | None = None  # with mem_len > 0: per layer (B, <= mem_len, C), the next call's
    attentions: tuple[tuple[torch.Tensor, torch.Tensor | None], ...] | None = None  # per layer (content, query)


# ----------------------------------------------------------------------------------------------
# Masks and relative positions


def stream_masks(
    perm_mask: torch.Tensor | None, attention_mask: torch.Tensor | None, T: int, M: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(content, query) boolean (B, T, M + T) masks, True where position i may attend to key j (the M
    memory positions first, seen by everyone); None: everything is visible. ``perm_mask`` (B, T, T)
    1 = i may not see j; ``attention_mask`` (B, T) 0 = padding, seen by no one. The content stream
    also sees itself."""
    blocked = None
    if perm_mask is not None:
        blocked = perm_mask > 0
    if attention_mask is not None:
        pad = (attention_mask == 0)[:, None, :]  # (B, 1, T)
        blocked = pad if blocked is None else blocked | pad
    if blocked is None:
        return None, None
    blocked = blocked.expand(-1, T, T)
    blocked = torch.cat([blocked.new_zeros(blocked.shape[0], T, M), blocked], dim=2)  # memory: visible
    eye = torch.zeros(T, M + T, dtype=torch.bool, device=blocked.device)
    eye[:, M:] = torch.eye(T, dtype=torch.bool, device=blocked.device)  # i sees key M + i
    return ~blocked | eye, ~blocked


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, S + T) scores of T queries against the relative distances S, S-1, ..., 1-T
    (:func:`relative_positions`; S = M + T keys, memory first) -> (B, H, T, S) with entry (i, j) at
    query i's distance to key j, M + i - j (index T - i + j)."""
    B, H, T, L = scores.shape
    S = L - T
    i, j = torch.arange(T, device=scores.device)[:, None], torch.arange(S, device=scores.device)[None, :]
    return scores.gather(-1, (T - i + j).expand(B, H, T, S))


def relative_positions(T: int, S: int, d_model: int) -> torch.Tensor:
    """(S + T, C) sinusoids of the distances S, S-1, ..., 1-T of T queries to S keys (HF XLNet's
    ``attn_type="bi"`` range)."""
    return sinusoids(torch.arange(S, -T, -1, device="cpu"), d_model)


# ----------------------------------------------------------------------------------------------
# Two-stream relative attention


class RelativeAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions and XLNet's segment term, run for
    the content stream and (given) the query stream with the same weights; post-norm residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, H, D = cfg.d_model, cfg.n_head, cfg.head_dim
        self.n_head, self.head_dim, self.scale = H, D, 1.0 / math.sqrt(D)
        self.q = nn.Linear(C, H * D, bias=False)
        self.k = nn.Linear(C, H * D, bias=False)
        self.v = nn.Linear(C, H * D, bias=False)
        self.r = nn.Linear(C, H * D, bias=False)  # keys of the relative positions
        self.o = nn.Linear(H * D, C, bias=False)
        self.r_w_bias = nn.Parameter(torch.zeros(H, D))  # content bias (u in the paper)
        self.r_r_bias = nn.Parameter(torch.zeros(H, D))  # position bias (v)
        self.r_s_bias = nn.Parameter(torch.zeros(H, D))  # segment bias
        self.seg_embed = nn.Parameter(torch.zeros(2, H, D))  # [same segment, different segment]
        self.layer_norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_drop = nn.Dropout(cfg.attention_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def attend(self, q, k, v, k_r, other_segment, allowed):
        """q (B, H, T, D) queries at positions; k, v (B, H, S, D) keys (S = M + T, memory first);
        k_r (1, H, S + T, D); other_segment (B, 1, T, S) bool or None; allowed (B, 1, T, S) bool or
        None. -> (B, T, H*D), probabilities (B, H, T, S)."""
        content = (q + self.r_w_bias[:, None]) @ k.transpose(-2, -1)  # (B, H, T, S)
        position = relative_shift((q + self.r_r_bias[:, None]) @ k_r.transpose(-2, -1))  # (B, H, T, S)
        scores = content + position
        if other_segment is not None:
            seg = (q + self.r_s_bias[:, None]) @ self.seg_embed.permute(1, 2, 0)  # (B, H, T, 2)
            scores = scores + torch.where(other_segment, seg[..., 1:], seg[..., :1])
        scores = scores * self.scale
        if allowed is not None:  # masked keys get weight 0; a query that may see nothing gets 0 everywhere
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1) * allowed
        else:
            probs = scores.softmax(dim=-1)
        y = self.attn_drop(probs) @ v  # (B, H, T, D)
        B, H, T, D = y.shape
        return y.transpose(1, 2).reshape(B, T, H * D), probs

    def forward(self, h, g, k_r, other_segment, allowed_h, allowed_g, target_mapping, mem=None):
        """h (B, T, C) content stream; g (B, P, C) query stream or None; target_mapping (B, P, T);
        mem (B, M, C) this layer's memory or None."""
        keys = h if mem is None else torch.cat([mem.to(h.dtype), h], dim=1)  # (B, S, C)
        k, v = self._heads(self.k(keys)), self._heads(self.v(keys))
        y_h, w_h = self.attend(self._heads(self.q(h)), k, v, k_r, other_segment, allowed_h)
        h = self.layer_norm(h + self.drop(self.o(y_h)))
        w_g = None
        if g is not None:  # each prediction's query moved to its position, attended, and moved back
            q_g = self._heads(target_mapping.transpose(1, 2) @ self.q(g))  # (B, H, T, D)
            y_g, w_g = self.attend(q_g, k, v, k_r, other_segment, allowed_g)
            g = self.layer_norm(g + self.drop(self.o(target_mapping @ y_g)))  # (B, P, C)
        return h, g, (w_h, w_g)


class FeedForward(nn.Module):
    """LN(x + layer_2(act(layer_1(x)))), applied to both streams."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer_1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.layer_2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.layer_norm = make_norm(cfg)
        self.act = activation_fn(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.drop(self.layer_2(self.drop(self.act(self.layer_1(x))))))


class XLNetLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rel_attn = RelativeAttention(cfg)
        self.ff = FeedForward(cfg)

    def forward(self, h, g, k_r_source, other_segment, allowed_h, allowed_g, target_mapping, mem=None):
        k_r = self.rel_attn._heads(self.rel_attn.r(k_r_source))  # (1, H, S + T, D)
        h, g, weights = self.rel_attn(h, g, k_r, other_segment, allowed_h, allowed_g, target_mapping, mem)
        return self.ff(h), (self.ff(g) if g is not None else None), weights


# ----------------------------------------------------------------------------------------------
# The model


class XLNetBody(nn.Module):
    """Token embedding, the query stream's start ``mask_emb`` and the layers (HF's ``XLNetModel``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.mask_emb = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.layer = nn.ModuleList([XLNetLayer(cfg) for _ in range(cfg.n_layer)])
        self.drop = nn.Dropout(cfg.dropout)


class XLNetLM(nn.Module):
    """XLNet with its LM head; see the module docstring. Given ``target_mapping`` the logits are
    the query stream's at the P predictions, else the content stream's at every position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = XLNetBody(cfg)
        self.lm_loss = LMHead(cfg)
        init_weights(self, cfg, cfg.n_layer)
        with torch.no_grad():  # HF's init: the free parameters N(0, init_std) too
            for name, p in self.named_parameters():
                if name.endswith(("mask_emb", "_bias", "seg_embed")) and p.dim() > 1:
                    p.normal_(0.0, cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_loss.weight = self.transformer.word_embedding.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding
        perm_mask: torch.Tensor | None = None,  # (B, T, T) 1 = position i may not see position j
        target_mapping: torch.Tensor | None = None,  # (B, P, T) one-hot rows: the positions predicted
        token_type_ids: torch.Tensor | None = None,  # (B, T) segment ids
        labels: torch.Tensor | None = None,  # (B, P) (or (B, T) without target_mapping), -100 ignored
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        mems: list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,  # per layer (B, M, C), earlier positions
        mem_len: int = 0,  # > 0: return the memory of the last mem_len positions for the next call
    ) -> XLNetOutput:
        body = self.transformer
        B, T = input_ids.shape
        M = mems[0].shape[1] if mems is not None else 0
        allowed_h, allowed_g = stream_masks(perm_mask, attention_mask, T, M)
        allowed_h = allowed_h[:, None] if allowed_h is not None else None  # (B, 1, T, M + T): all heads
        allowed_g = allowed_g[:, None] if allowed_g is not None else None
        other_segment = None
        if token_type_ids is not None:  # memory positions count as segment 0
            key_types = torch.cat([token_type_ids.new_zeros(B, M), token_type_ids], dim=1)  # (B, M + T)
            other_segment = (token_type_ids[:, :, None] != key_types[:, None, :])[:, None]  # (B, 1, T, M + T)

        h = body.drop(body.word_embedding(input_ids))  # (B, T, C)
        g = tm = None
        if target_mapping is not None:
            tm = target_mapping.to(h.dtype)
            g = body.drop(body.mask_emb.expand(B, tm.shape[1], -1))  # (B, P, C)
        r = body.drop(relative_positions(T, M + T, self.config.d_model).to(h.device, h.dtype))[None]  # (1, M+2T, C)

        hidden, attns, new_mems = [h], [], []
        for i, layer in enumerate(body.layer):
            mem = mems[i] if mems is not None else None
            if mem_len > 0:  # this layer's input, after the memory it had
                new_mems.append((h if mem is None else torch.cat([mem.to(h.dtype), h], dim=1))[:, -mem_len:].detach())
            h, g, weights = layer(h, g, r, other_segment, allowed_h, allowed_g, tm, mem)
            hidden.append(h)
            attns.append(weights)
        out = body.drop(g if g is not None else h)
        logits = self.lm_loss(out)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return XLNetOutput(
            logits,
            loss,
            out,
            tuple(hidden) if output_hidden_states else None,
            tuple(new_mems) if mem_len > 0 else None,
            tuple(attns) if output_attentions else None,
        )


# ----------------------------------------------------------------------------------------------
# Scoring under a factorisation order


def order_masks(order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """perm_mask (B, T, T) and target_mapping (B, T-1, T) of the chain rule along ``order`` (B, T),
    a permutation of the positions per row: position order[t] sees order[:t] and is predicted for
    t >= 1 (the first position of the order is context only)."""
    B, T = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(T, device=order.device).expand(B, T))
    perm_mask = rank[:, None, :] >= rank[:, :, None]  # (B, T, T): j not before i in the order
    target_mapping = torch.zeros(B, T - 1, T, device=order.device)
    target_mapping.scatter_(2, order[:, 1:, None], 1.0)
    return perm_mask, target_mapping


@torch.no_grad()
def order_logprobs(model: XLNetLM, input_ids: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """log P(x_{z_t} | x_{z_<t}) for t = 1 .. T-1 along the factorisation order z (B, T) (default: left to
    right, 0 .. T-1, the causal score a decoder gives), in the order's sequence.  (B, T-1) float32."""
    B, T = input_ids.shape
    if order is None:
        order = torch.arange(T, device=input_ids.device).expand(B, T)
    perm_mask, target_mapping = order_masks(order)
    logits = model(input_ids, perm_mask=perm_mask, target_mapping=target_mapping).logits.float()  # (B, T-1, V)
    targets = input_ids.gather(1, order[:, 1:])  # (B, T-1)
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
