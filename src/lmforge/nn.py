"""The Transformer parts shared by all three model families.

Read top-down: positions -> norms -> attention (with its KV cache and masks) -> feed-forward ->
the residual block -> the stack (embeddings + blocks + final norm) that every model is built on.

Shapes: B batch, T query length, S key length, C = d_model, H heads, K key/value heads, D head size.

One file (about 550 lines) on purpose: every family's forward runs through these parts in this
order, and reading them in one sitting, as nanoGPT's ``model.py``, is the point; the CPU fast
decode step that mirrors them (:mod:`lmforge.models.fast_decode`) is tested against them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import GATED, ModelConfig
from lmforge.errors import LMForgeError

# ----------------------------------------------------------------------------------------------
# Positions


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos positions (Vaswani et al.), sines in the first half and cosines in the second
    (the fairseq / Marian layout; a permutation of the paper's interleaving).  (n_positions, dim)"""
    return sinusoids(torch.arange(n_positions, device="cpu"), dim)


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`sinusoidal_table`'s rows for any (also negative) ``positions`` (P,), computed in float64
    on the CPU.  (P, dim) float32; XLNet embeds relative distances this way (Transformer-XL)."""
    pos = positions.to("cpu", torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)
    angles = pos * inv_freq  # (P, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al.) in the rotate-half layout used by LLaMA / HF: cos/sin tables per position."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (P, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (P, D)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, T) -> two (B, 1, T, D) tables that broadcast over heads
        return self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Norms


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


# ----------------------------------------------------------------------------------------------
# Attention


class KVCache:
    """Preallocated keys and values for incremental decoding, one slot per layer.

    ``k`` / ``v``: (layers, B, K, max_len, D). ``length`` is how many positions are filled; a model
    advances it once per forward, after all layers wrote. Cross-attention keys/values of an
    encoder-decoder are computed once from the encoder output and kept in ``cross``.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, K, T, D) new keys/values after the filled part; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise LMForgeError(f"KV cache full: {end} positions needed, cache holds {self.max_len}")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Select / repeat batch rows (beam search)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self.cross = [
            None if c is None else (c[0].index_select(0, index), c[1].index_select(0, index)) for c in self.cross
        ]


def attention_mask_4d(
    key_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    causal: bool,
    past: int = 0,
    device: torch.device | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean (B or 1, 1, T, S) mask, True where a query may attend, on ``key_mask``'s device (else
    ``device``).

    ``key_mask`` (B, S) marks real (1) and padding (0) keys. A query always sees itself, so a
    padding query never has an all-masked row (which would give NaN); its output is ignored.
    ``document_ids`` (B, S): the document of each position; a query sees only the keys of its own
    (block-diagonal, and causal within each block when ``causal``).
    """
    if key_mask is not None:
        device = key_mask.device
    elif document_ids is not None:
        device = document_ids.device
    q_pos = torch.arange(past, past + q_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    if causal:
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, S)
    else:
        allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if document_ids is not None:
        q_doc = document_ids[:, past : past + q_len]
        allowed = allowed & (q_doc[:, None, :, None] == document_ids[:, None, None, :])  # (B, 1, T, S)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
        allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None, None]
    return allowed


def document_ids_from_separators(input_ids: torch.Tensor, separator: int) -> torch.Tensor:
    """(B, T) document index of each position of packed rows whose documents are separated by
    ``separator`` (EOS): a separator opens the next document, as a text to score or generate
    from starts after one (``text_start_id``), so the tokens after it see it and nothing before."""
    return (input_ids == separator).cumsum(dim=-1)


class Attention(nn.Module):
    """Multi-head attention softmax(Q K^T / sqrt(D)) V with grouped key/value heads (``scale_attention=False``:
    softmax(Q K^T) V, as GPT-2 with ``scale_attn_weights=False``).

    Self-attention projects Q, K, V with one fused matmul (``qkv``); cross-attention projects Q from
    the decoder (``q``) and K, V from the encoder output (``kv``). ``proj`` is W^O. ``qk_norm``:
    each query and key head is RMS-normalised (``q_norm`` / ``k_norm``, a gain per head dimension)
    before RoPE, so the scores stay bounded by the gains whatever the activations' scale.
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.cross = cross
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if cross:
            self.q = nn.Linear(cfg.d_model, q_dim, bias=cfg.bias)
            self.kv = nn.Linear(cfg.d_model, 2 * kv_dim, bias=cfg.bias)
        else:
            self.qkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.bias)
        self.proj = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.dropout = cfg.attention_dropout
        self.scale = None if cfg.scale_attention else 1.0  # None: SDPA's 1 / sqrt(D)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def _project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).split(self.n_kv_head * self.head_dim, dim=-1)
        k = self._heads(k, self.n_kv_head)
        return (k if self.k_norm is None else self.k_norm(k)), self._heads(v, self.n_kv_head)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        mask: torch.Tensor | None = None,  # (B|1, 1, T, S) bool, True = attend
        is_causal: bool = False,  # causal with no explicit mask (the fast path)
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        context: torch.Tensor | None = None,  # (B, S, C) encoder output, for cross-attention
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        if self.cross:
            q = self._heads(self.q(x), self.n_head)
            if self.q_norm is not None:
                q = self.q_norm(q)
            if cache is not None and cache.cross[layer] is not None:
                k, v = cache.cross[layer]
            else:
                k, v = self._project_kv(context)
                if cache is not None:
                    cache.cross[layer] = (k, v)
        else:
            q, k, v = self.qkv(x).split(
                [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
            )
            q, k, v = self._heads(q, self.n_head), self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        if self.n_kv_head != self.n_head:  # GQA: each K/V head serves n_head / n_kv_head query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the explicit path: same outputs, and the probabilities to look at
            scores = (q @ k.transpose(-2, -1)) * (self.scale or 1 / math.sqrt(self.head_dim))  # (B, H, T, S)
            if is_causal:
                mask = attention_mask_4d(None, T, k.shape[2], causal=True, past=k.shape[2] - T, device=q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            y = F.dropout(weights, dropout, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None, scale=self.scale
            )
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H*D)
        return self.proj(y), weights


# ----------------------------------------------------------------------------------------------
# Feed-forward

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),  # ReLU squared (So et al. 2021, Primer)
    "silu": F.silu,
}


def activation_fn(name: str):
    """The function of an activation name; a gated FFN's name (swiglu, ...) gives its gate's."""
    return _ACTIVATIONS[GATED.get(name, name)]


class MLP(nn.Module):
    """Position-wise feed-forward: proj(act(fc(x))), or proj(act(gate) * up) when gated (SwiGLU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.gated
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim * (2 if cfg.gated else 1), bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.proj(h)


# ----------------------------------------------------------------------------------------------
# The output layer


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)``: the identity near 0, smooth, and inside (-cap, cap) (Gemma 2)."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


class LMHead(nn.Linear):
    """The linear layer over the vocabulary, with the config's ``logit_softcap`` applied to its
    output, so that every caller (forward, scoring, generation, serving) gets the same logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.softcap = cfg.logit_softcap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softcap(super().forward(x), self.softcap)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", softcap={self.softcap}" if self.softcap is not None else "")


# ----------------------------------------------------------------------------------------------
# The residual block


class Block(nn.Module):
    """Attention + (cross-attention) + MLP, each with a residual connection and a norm placed
    before the sublayer (pre-norm: x + f(norm(x))) or after the sum (post-norm: norm(x + f(x)))."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        if cross:
            self.norm_cross = make_norm(cfg)
            self.cross_attn = Attention(cfg, cross=True)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _residual(self, x, norm, fn):
        if self.pre_norm:
            out, w = fn(norm(x))
            return x + self.drop(out), w
        out, w = fn(x)
        return norm(x + self.drop(out)), w

    def forward(
        self,
        x,
        mask=None,
        is_causal=False,
        rope=None,
        cache=None,
        layer=0,
        context=None,
        context_mask=None,
        need_weights=False,
    ):
        x, w_self = self._residual(
            x, self.norm1, lambda h: self.attn(h, mask, is_causal, rope, cache, layer, need_weights=need_weights)
        )
        w_cross = None
        if context is not None:
            x, w_cross = self._residual(
                x,
                self.norm_cross,
                lambda h: self.cross_attn(
                    h, context_mask, cache=cache, layer=layer, context=context, need_weights=need_weights
                ),
            )
        x, _ = self._residual(x, self.norm2, lambda h: (self.mlp(h), None))
        return x, w_self, w_cross


# ----------------------------------------------------------------------------------------------
# The stack: embeddings -> blocks -> final norm


@dataclass
class StackOutput:
    last_hidden_state: torch.Tensor  # (B, T, C)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output, then each block's
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, T, S)
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class TransformerStack(nn.Module):
    """Token (+ position, + segment) embeddings, a stack of blocks, and a final norm (pre-norm).

    A decoder-only LM, a BERT encoder and both halves of an encoder-decoder are each one stack.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_layer: int,
        causal: bool,
        cross: bool = False,
        tok_emb: nn.Embedding | None = None,
        segments: bool = False,
    ):
        super().__init__()
        self.cfg, self.causal, self.n_layer = cfg, causal, n_layer
        self.tok_emb = tok_emb if tok_emb is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        elif cfg.positions == "rope":
            self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_positions, cfg.rope_base)
        if segments and cfg.type_vocab_size > 0:
            self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.emb_norm = make_norm(cfg) if cfg.embedding_norm else None
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, cross=cross) for _ in range(n_layer)])
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else None

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> KVCache:
        w = self.tok_emb.weight
        return KVCache(
            self.n_layer, batch, self.cfg.kv_heads, self.cfg.head_dim, max_len, dtype or w.dtype, device or w.device
        )

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple | None]:
        """The input of the first block: (B, T, C) token (+ position, + segment) embeddings, and the
        RoPE tables of ``position_ids`` (B, T) when the model rotates queries and keys (else None)."""
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.emb_scale != 1.0:
            x = x * self.emb_scale
        rope = None
        if self.cfg.positions == "learned":
            x = x + self.pos_emb(position_ids)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.pos_table[position_ids].to(x.dtype)
        elif self.cfg.positions == "rope":
            rope = self.rope(position_ids)
        if hasattr(self, "type_emb"):
            x = x + self.type_emb(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.drop(x), rope

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token; S = past + T with a cache
        position_ids: torch.Tensor | None = None,  # (B, T); default past .. past+T-1
        token_type_ids: torch.Tensor | None = None,  # (B, T) segment ids
        cache: KVCache | None = None,
        context: torch.Tensor | None = None,  # (B, S_enc, C) encoder output, for cross-attention
        context_mask: torch.Tensor | None = None,  # (B, S_enc)
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        document_ids: torch.Tensor | None = None,  # (B, S) document of each position: attend within it
    ) -> StackOutput:
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            if past + T > self.cfg.max_positions and self.cfg.positions != "none":
                raise LMForgeError(f"sequence of {past + T} tokens exceeds max_positions={self.cfg.max_positions}")
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        x, rope = self.embed(input_ids, position_ids, token_type_ids)

        # One mask for all layers. Unpadded causal attention from position 0 takes SDPA's
        # is_causal fast path; a single query with no padding needs no mask at all.
        k_len = past + T
        if attention_mask is not None and attention_mask.shape[1] != k_len:
            raise LMForgeError(f"attention_mask has {attention_mask.shape[1]} positions, expected {k_len}")
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if document_ids is not None:
            if document_ids.shape != (B, k_len):
                raise LMForgeError(f"document_ids has shape {tuple(document_ids.shape)}, expected {(B, k_len)}")
            if bool((document_ids == document_ids[:, :1]).all()):  # one document per row: nothing to hide
                document_ids = None
        mask, is_causal = None, False
        if document_ids is not None:  # packed documents: block-diagonal (and causal) attention
            mask = attention_mask_4d(attention_mask, T, k_len, self.causal, past, input_ids.device, document_ids)
        elif attention_mask is None and self.causal and T > 1:
            if past == 0:
                is_causal = True
            else:  # a chunk appended to a cache
                mask = attention_mask_4d(None, T, k_len, True, past, device=input_ids.device)
        elif attention_mask is not None:
            mask = attention_mask_4d(attention_mask, T, k_len, self.causal, past)
        ctx_mask = None
        if context_mask is not None and not bool(context_mask.all()):
            ctx_mask = context_mask[:, None, None, :].bool()

        hidden, attns, cross_attns = [x], [], []
        for i, block in enumerate(self.blocks):
            x, w_self, w_cross = block(x, mask, is_causal, rope, cache, i, context, ctx_mask, output_attentions)
            hidden.append(x)
            attns.append(w_self)
            cross_attns.append(w_cross)
        if cache is not None:
            cache.length += T
        if self.norm_f is not None:
            x = self.norm_f(x)
            hidden[-1] = x
        return StackOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns) if output_attentions and context is not None else None,
        )


def init_weights(model: nn.Module, cfg: ModelConfig, n_residual_layers: int) -> None:
    """GPT-2 init: N(0, init_std) for matrices and embeddings, zero biases, unit norms, and the
    projections that write into the residual stream scaled by 1/sqrt(2 * layers) so the residual
    variance does not grow with depth. ``init="fan_in"``: linear layers N(0, 1 / fan_in) instead
    (T5's scale; embeddings keep ``init_std``). At GPT-2's scale the cross-attention of a small
    encoder-decoder starts so near zero that its decoder learns to ignore the source
    (docs/training.md, "The encoder-decoder's blind decoder"). ``zero_init_proj``: then the output
    projections of attention, cross-attention and MLP (the residual writers) are set to zero."""
    resid_std = cfg.init_std / math.sqrt(2 * n_residual_layers)
    residual_writers = ("attn.proj", "mlp.proj")  # also cross_attn.proj
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and cfg.init == "fan_in":
            nn.init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            std = resid_std if name.endswith(residual_writers) else cfg.init_std
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        if cfg.zero_init_proj and isinstance(module, nn.Linear) and name.endswith(residual_writers):
            nn.init.zeros_(module.weight)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in nats; ``labels`` are aligned with ``logits`` (no shift), -100 ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` runs the block in eval mode (no dropout) and gives the model back
    its training mode afterwards, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
