"""A fast decode step for the stock decoder: the decoder forward of :mod:`lmforge.nn` for one new
token per row, with the parameters bound once (:class:`FastDecodeStep`), and the CPU matmuls it
uses for a handful of rows (:func:`few_rows_linear`, :func:`onednn_linear`).

Generation (:func:`lmforge.infer.generate_ids`, ``fast=True``) takes it for each step after the
prompt. Its contract is ``tests/test_fast_decode.py``: the same tokens as ``model.forward`` and
log-probabilities within float rounding, for learned, sinusoidal and rotary positions, pre- and
post-norm, plain and gated MLPs, with and without padding; for int8 models
(:mod:`lmforge.models.quant`) ``tests/test_int8.py`` holds it to their own forward.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.decoder import DecoderLM
from lmforge.models.quant import Int8Linear, Int8LMHead, int8_linear
from lmforge.nn import (
    MLP,
    Attention,
    Block,
    LMHead,
    RotaryEmbedding,
    TransformerStack,
    activation_fn,
    apply_rope,
    softcap,
)

FEW_ROWS = 32  # up to this many rows per step, a CPU decode step uses few_rows_linear


def few_rows_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` for a handful of rows on a CPU, where decoding is bound by reading the weights.

    MKL streams a (out, in) weight 2-3x faster as the left operand of W @ x^T (its many-column
    kernel) than through the gemv / skinny gemm that ``F.linear`` reaches at 1-16 rows (measured
    on 6 x 384 GPT-2 shapes: 13 GB/s -> 20-30 GB/s on 2 cores). One row is doubled, because the
    single-column case falls back to the slow gemv. The sums run in another order, so results
    differ from ``F.linear`` by float rounding (~1e-6 relative).
    """
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    m = x.shape[0]
    if m == 1:
        x = torch.cat([x, x])
    y = torch.mm(w, x.t()).t()[:m].contiguous()  # (m, out), row-major again for SDPA's fast kernel
    if b is not None:
        y += b
    return y.reshape(*shape[:-1], w.shape[0])


PACK_LIMIT = 2 << 30  # bytes of re-laid-out weight copies a CPU decode step may add (at most one set per batch size)


def onednn_linear(weights: list[torch.Tensor], rows: int):
    """``F.linear`` through oneDNN for ``rows`` rows, each weight re-laid once into the blocked
    layout oneDNN picks for that many rows (what ``torch.compile``'s CPU freezing does): the
    fastest way found to stream weights at 1-32 rows on a CPU (25 matmuls of a 6 x 384 GPT-2 step
    at 8 rows: 6.1 ms as W @ x^T, 5.0 ms). Float rounding differs from ``F.linear`` (~1e-6
    relative). None where oneDNN cannot: not fp32, no oneDNN, or the copies would pass PACK_LIMIT."""
    if (
        weights[0].dtype != torch.float32
        or not torch.backends.mkldnn.is_available()
        or sum(w.numel() * 4 for w in {id(w): w for w in weights}.values()) > PACK_LIMIT
    ):
        return None
    try:
        packed = {id(w): torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows) for w in weights}
        op = torch.ops.mkldnn._linear_pointwise
    except (RuntimeError, AttributeError):  # a torch build without these kernels
        return None

    def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return op(x, packed[id(w)], b, "none", [], "")

    return linear


class Int8Weight(NamedTuple):
    """The weight of an :class:`~lmforge.models.quant.Int8Linear` as a decode step binds it."""

    q: torch.Tensor
    scale: torch.Tensor
    packed: object  # fbgemm's packed weight, bias included (None: the weight-only kernel)


def _bind(linear: nn.Module) -> tuple[torch.Tensor | Int8Weight, torch.Tensor | None]:
    """(weight, bias) of a linear layer: an int8 layer's weight as an :class:`Int8Weight`."""
    if isinstance(linear, Int8Linear):
        return Int8Weight(linear.qweight, linear.scale, linear.packed), linear.bias
    return linear.weight, linear.bias


def with_int8(linear):
    """The step's matmul ``linear`` with int8 weights (:class:`Int8Weight`) sent to torch's int8 kernels."""

    def mixed(x: torch.Tensor, w, b: torch.Tensor | None) -> torch.Tensor:
        if type(w) is Int8Weight:
            return int8_linear(x, w.q, w.scale, b, w.packed)
        return linear(x, w, b)

    return mixed


class FastDecodeStep:
    """The decode step of a :class:`~lmforge.models.DecoderLM` (one new token per row, KV cache)
    with its parameters bound once and no module dispatch: the same operations, in the same order,
    as ``model(tokens[:, None], cache=cache, ...)``, at a fraction of the Python overhead per step;
    on a CPU with few rows the matmuls take :func:`onednn_linear`, else :func:`few_rows_linear`
    (the same numbers up to float rounding); int8 layers (:func:`~lmforge.models.quant.quantize_int8`)
    take torch's int8 kernels, as their own forward does. Used only when the model is made of the
    stock modules (no LoRA or other wrapped layers, no hooks); anything else takes the ordinary
    forward.

    A hand-written copy of the decoder forward of :mod:`lmforge.nn` (``TransformerStack``,
    ``Block``, ``Attention``, ``MLP``): an edit there must keep ``tests/test_fast_decode.py`` (this
    step against ``model.forward``, token for token) green, by the same edit here.
    """

    @staticmethod
    def supported(model) -> bool:
        """Whether ``model`` is a stock decoder this step computes exactly."""
        if type(model) is not DecoderLM or type(model.transformer) is not TransformerStack:
            return False
        norms = (nn.LayerNorm, nn.RMSNorm)
        expected = {
            DecoderLM,
            TransformerStack,
            Block,
            Attention,
            MLP,
            nn.Linear,
            LMHead,
            Int8Linear,
            Int8LMHead,
            nn.Embedding,
            nn.Dropout,
            nn.ModuleList,
            RotaryEmbedding,
            *norms,
        }
        mods = list(model.modules())
        if any(type(m) not in expected for m in mods):
            return False  # a replaced layer (LoRA, quantised, ...): use the model's own forward
        if any(m._forward_hooks or m._forward_pre_hooks for m in mods):
            return False
        return all(not hasattr(b, "cross_attn") for b in model.transformer.blocks)

    def __init__(self, model):
        cfg, tr = model.config, model.transformer
        self.H, self.K, self.D = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.splits = [self.H * self.D, self.K * self.D, self.K * self.D]
        self.pre = cfg.norm_position == "pre"
        self.gated, self.act = cfg.gated, activation_fn(cfg.activation)
        self.scale = tr.blocks[0].attn.scale if len(tr.blocks) else None
        self.positions = cfg.positions
        self.tok_w = tr.tok_emb.weight
        self.pos_w = tr.pos_emb.weight if cfg.positions == "learned" else None
        self.pos_table = tr.pos_table if cfg.positions == "sinusoidal" else None
        self.rope = (tr.rope.cos, tr.rope.sin) if cfg.positions == "rope" else None
        self.emb_scale = tr.emb_scale
        self.emb_norm = self._norm(tr.emb_norm) if tr.emb_norm is not None else None
        self.norm_f = self._norm(tr.norm_f) if tr.norm_f is not None else None
        (self.head_w, self.head_b), self.softcap = _bind(model.lm_head), model.lm_head.softcap
        self.layers = [
            (
                self._norm(b.norm1),
                *_bind(b.attn.qkv),
                *_bind(b.attn.proj),
                self._norm(b.norm2),
                *_bind(b.mlp.fc),
                *_bind(b.mlp.proj),
                None if b.attn.q_norm is None else (self._norm(b.attn.q_norm), self._norm(b.attn.k_norm)),
            )
            for b in tr.blocks
        ]
        bound = [w for layer in self.layers for w in (layer[1], layer[3], layer[6], layer[8])] + [self.head_w]
        self.weights = [w for w in bound if isinstance(w, torch.Tensor)]  # the float ones
        self.int8 = len(self.weights) < len(bound)
        self._linears: dict[int, object] = {}  # rows -> the CPU matmul for that many rows

    def _linear(self, tokens: torch.Tensor):
        """The matmul of a step: on a CPU with few rows, oneDNN on weights laid out for that many
        rows (else W @ x^T); ``F.linear`` elsewhere; int8 weights through torch's int8 kernels."""
        B = tokens.shape[0]
        if B not in self._linears:
            if tokens.device.type != "cpu" or B > FEW_ROWS or not self.weights:
                linear = F.linear
            else:
                linear = onednn_linear(self.weights, B) or few_rows_linear
            self._linears[B] = with_int8(linear) if self.int8 else linear
        return self._linears[B]

    @staticmethod
    def _norm(m):
        if isinstance(m, torch.nn.RMSNorm):
            return functools.partial(F.rms_norm, normalized_shape=m.normalized_shape, weight=m.weight, eps=m.eps)
        return functools.partial(
            F.layer_norm, normalized_shape=m.normalized_shape, weight=m.weight, bias=m.bias, eps=m.eps
        )

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor | None, cache, mask: torch.Tensor | None):
        """tokens (B,); pos (B, 1) position ids or None (= the cache length for every row);
        mask (B, 1, 1, past + 1) bool or None. Returns the (B, V) logits of the new position."""
        B, H, K, D = tokens.shape[0], self.H, self.K, self.D
        linear = self._linear(tokens)
        past = cache.length
        x = F.embedding(tokens[:, None], self.tok_w)  # (B, 1, C)
        if self.emb_scale != 1.0:
            x = x * self.emb_scale
        rope = None
        if self.positions == "learned":
            x = x + (self.pos_w[past] if pos is None else F.embedding(pos, self.pos_w))
        elif self.positions == "sinusoidal":
            x = x + (self.pos_table[past] if pos is None else self.pos_table[pos]).to(x.dtype)
        elif self.positions == "rope":
            p = pos if pos is not None else past
            rope = (self.rope[0][p], self.rope[1][p])
            if pos is None:
                rope = (rope[0][None, None, None], rope[1][None, None, None])  # (1, 1, 1, D)
            else:
                rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))  # (B, 1, 1, D)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        for i, (n1, wqkv, bqkv, wo, bo, n2, w1, b1, w2, b2, qk_norm) in enumerate(self.layers):
            h = n1(x) if self.pre else x
            q, k, v = linear(h, wqkv, bqkv).split(self.splits, dim=-1)
            q = q.view(B, 1, H, D).transpose(1, 2)
            k = k.view(B, 1, K, D).transpose(1, 2)
            v = v.view(B, 1, K, D).transpose(1, 2)
            if qk_norm is not None:
                q, k = qk_norm[0](q), qk_norm[1](k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            k, v = cache.update(i, k, v)
            if K != H:
                k = k.repeat_interleave(H // K, dim=1)
                v = v.repeat_interleave(H // K, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            y = linear(y.transpose(1, 2).reshape(B, 1, H * D), wo, bo)
            x = x + y if self.pre else n1(x + y)
            h = linear(n2(x) if self.pre else x, w1, b1)
            if self.gated:
                gate, up = h.chunk(2, dim=-1)
                h = self.act(gate) * up
            else:
                h = self.act(h)
            h = linear(h, w2, b2)
            x = x + h if self.pre else n2(x + h)
        cache.length += 1
        if self.norm_f is not None:
            x = self.norm_f(x)
        return softcap(linear(x[:, 0], self.head_w, self.head_b), self.softcap)
