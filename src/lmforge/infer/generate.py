"""Generation: greedy, sampling (temperature, top-k, top-p, repetition penalty), beam search.

Two levels:

- :func:`generate_ids` works on tensors: a (B, P) batch of prompt ids (left-padded for a decoder,
  with its attention mask; the source for an encoder-decoder) -> (B, N) new token ids.
- :func:`generate` works on text: encodes the prompts, pads them, decodes the completions, applies
  stop strings and streams text as it comes.

The decode loop with the KV cache (``use_cache=True``, the default) runs the prompt once
(*prefill*, logits of the last position only) into a cache preallocated for ``P + max_new_tokens``
positions, then feeds one token per step. ``use_cache=False`` re-runs the whole sequence every step:
slow, and the reference that the cached loop must reproduce.

Sampling follows HF's order: repetition penalty on the raw logits (a logit ``l`` of a token already
present becomes ``l / penalty`` if positive, ``l * penalty`` if negative), then temperature, top-k,
top-p, then a draw from the softmax with a ``torch.Generator`` seeded from ``seed`` (the global RNG
is never touched). Beam search keeps ``num_beams`` hypotheses by summed log-probability; a finished
hypothesis (EOS, or the length limit) scores ``sum logprob / generated_len ** length_penalty``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, LMForgeError
from lmforge.infer.options import SamplingOptions
from lmforge.nn import apply_rope, eval_mode
from lmforge.tokenizer import special_id

# ----------------------------------------------------------------------------------------------
# Results


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


# ----------------------------------------------------------------------------------------------
# Logit processors


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


class _Chooser:
    """Picks the next token from (B, V) logits: greedy or sampled, with the processors above."""

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


# ----------------------------------------------------------------------------------------------
# Steppers: one forward per step, the same interface for both generative families


def _arch(model) -> str:
    cfg = getattr(model, "config", None)
    arch = getattr(cfg, "arch", None)
    if arch is None:
        raise LMForgeError("generation needs an lmforge model (with a .config)")
    return arch


def _check_context(model, n_positions: int, what: str) -> None:
    cfg = model.config
    if cfg.positions != "none" and n_positions > cfg.max_positions:
        raise ConfigError(
            f"{what} needs {n_positions} positions but the model's context is max_positions={cfg.max_positions}; "
            f"lower max_new_tokens or shorten the prompt"
        )


FEW_ROWS = 32  # up to this many rows per step, a CPU decode step uses _few_rows_linear


def _few_rows_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
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


def _onednn_linear(weights: list[torch.Tensor], rows: int):
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


class _LeanDecodeStep:
    """The decode step of a :class:`~lmforge.models.DecoderLM` (one new token per row, KV cache)
    with its parameters bound once and no module dispatch: the same operations, in the same order,
    as ``model(tokens[:, None], cache=cache, ...)``, at a fraction of the Python overhead per step;
    on a CPU with few rows the matmuls take :func:`_onednn_linear`, else :func:`_few_rows_linear`
    (the same numbers up to float rounding). Used only when the model is made of the stock modules
    (no LoRA or other wrapped layers, no hooks); anything else takes the ordinary forward."""

    @staticmethod
    def supported(model) -> bool:
        from torch import nn

        from lmforge.models.decoder import DecoderLM
        from lmforge.nn import MLP, Attention, Block, RotaryEmbedding, TransformerStack

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
        from lmforge.nn import activation_fn

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
        self.head_w, self.head_b = model.lm_head.weight, model.lm_head.bias
        self.layers = [
            (
                self._norm(b.norm1),
                b.attn.qkv.weight,
                b.attn.qkv.bias,
                b.attn.proj.weight,
                b.attn.proj.bias,
                self._norm(b.norm2),
                b.mlp.fc.weight,
                b.mlp.fc.bias,
                b.mlp.proj.weight,
                b.mlp.proj.bias,
            )
            for b in tr.blocks
        ]
        self.weights = [
            w for b in tr.blocks for w in (b.attn.qkv.weight, b.attn.proj.weight, b.mlp.fc.weight, b.mlp.proj.weight)
        ] + [self.head_w]
        self._linears: dict[int, object] = {}  # rows -> the CPU matmul for that many rows

    def _linear(self, tokens: torch.Tensor):
        """The matmul of a step: on a CPU with few rows, oneDNN on weights laid out for that many
        rows (else W @ x^T); ``F.linear`` elsewhere."""
        B = tokens.shape[0]
        if tokens.device.type != "cpu" or B > FEW_ROWS:
            return F.linear
        if B not in self._linears:
            self._linears[B] = _onednn_linear(self.weights, B) or _few_rows_linear
        return self._linears[B]

    @staticmethod
    def _norm(m):
        import functools

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
        for i, (n1, wqkv, bqkv, wo, bo, n2, w1, b1, w2, b2) in enumerate(self.layers):
            h = n1(x) if self.pre else x
            q, k, v = linear(h, wqkv, bqkv).split(self.splits, dim=-1)
            q = q.view(B, 1, H, D).transpose(1, 2)
            k = k.view(B, 1, K, D).transpose(1, 2)
            v = v.view(B, 1, K, D).transpose(1, 2)
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
        return linear(x[:, 0], self.head_w, self.head_b)


class _DecoderStepper:
    """Decoder-only: prompt (B, P) left-padded, + one token per step."""

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
        _check_context(model, P + max_new, f"a prompt of {P} tokens + {max_new} new tokens")
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
            if fast and _LeanDecodeStep.supported(model):
                self.lean = _LeanDecodeStep(model)
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


class _Seq2SeqStepper:
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
        _check_context(model, input_ids.shape[1], f"a source of {input_ids.shape[1]} tokens")
        _check_context(model, 1 + max_new, f"{max_new} new tokens")
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


# ----------------------------------------------------------------------------------------------
# The loops


def _resolve_special(value, cfg_value):
    return cfg_value if isinstance(value, str) and value == "config" else value


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A private RNG on ``device``: seeded from ``seed``, or from the OS when ``seed`` is None."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


@torch.inference_mode()
def generate_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    beam_search: bool | None = None,
    eos_id: int | None | str = "config",
    pad_id: int | None | str = "config",
    decoder_start_id: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    fast: bool = True,
    callback: Callable[[int, torch.Tensor], torch.Tensor | Sequence[bool] | None] | None = None,
    output_logprobs: bool = False,
    check_every: int | None = None,
) -> GenerateOutput:
    """Generate up to ``max_new_tokens`` tokens after each prompt row.

    ``input_ids`` (B, P): for a decoder the prompts, left-padded, with ``attention_mask`` (1 = real
    token); for an encoder-decoder the sources (any padding side) and their mask.
    ``do_sample`` None means: sample when ``temperature > 0``; ``temperature=0`` or
    ``do_sample=False`` is greedy. ``num_beams > 1`` is beam search (deterministic; ``beam_search=True``
    forces the beam code path even at width 1, where it equals greedy).
    ``eos_id`` / ``pad_id`` default to the model config's ("config"); None disables EOS.
    ``callback(step, tokens)`` sees each step's (B,) tokens and may return a (B,) bool of rows to
    stop (stop strings). ``check_every``: steps between "all finished?" checks (a host sync);
    default 1 on CPU, 8 on an accelerator. ``fast``: decode steps of a stock decoder skip module
    dispatch (the same operations; False runs ``model.forward`` every step).
    """
    arch = _arch(model)
    if arch == "encoder":
        raise LMForgeError("an encoder (masked LM) does not generate left to right; use fill-mask instead")
    if input_ids.dim() != 2:
        raise LMForgeError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise LMForgeError("empty prompt: give at least one token (e.g. a BOS token)")
    cfg = model.config
    SamplingOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        num_beams=num_beams,
        length_penalty=length_penalty,
    ).check_model(cfg.vocab_size)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    eos = _resolve_special(eos_id, cfg.eos_id)
    pad = _resolve_special(pad_id, cfg.pad_id)
    if pad is None:
        pad = eos if eos is not None else 0
    if do_sample is None:
        do_sample = temperature > 0
    if do_sample and temperature == 0:
        do_sample = False
    if do_sample and generator is None:
        generator = make_generator(seed, device)
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8

    with eval_mode(model):
        if arch == "decoder":
            stepper = _DecoderStepper(model, input_ids, attention_mask, max_new_tokens, use_cache, fast)
            seen_ids, seen_mask = input_ids, (stepper.mask[:, : stepper.P] if stepper.padded else None)
        else:
            start = decoder_start_id if decoder_start_id is not None else cfg.decoder_start_id
            if start is None:
                start = cfg.bos_id if cfg.bos_id is not None else 0
            stepper = _Seq2SeqStepper(model, input_ids, attention_mask, max_new_tokens, use_cache, start)
            seen_ids, seen_mask = stepper.start_tokens(), None
        chooser = _Chooser(do_sample, temperature, top_k, top_p, repetition_penalty, generator)
        chooser.init_present(seen_ids, seen_mask, cfg.vocab_size)
        if beam_search or (beam_search is None and num_beams > 1):
            return _beam_search(
                stepper, chooser, input_ids.shape[0], num_beams, max_new_tokens, eos, pad, length_penalty
            )
        return _sample_loop(
            stepper,
            chooser,
            input_ids.shape[0],
            max_new_tokens,
            eos,
            pad,
            callback,
            output_logprobs,
            check_every,
            device,
        )


def _sample_loop(
    stepper,
    chooser: _Chooser,
    B: int,
    max_new: int,
    eos: int | None,
    pad: int,
    callback,
    output_logprobs: bool,
    check_every: int,
    device,
) -> GenerateOutput:
    out = torch.full((B, max_new), pad, dtype=torch.long, device=device)
    lps = torch.zeros(B, max_new, device=device) if output_logprobs else None
    track = eos is not None or callback is not None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    logits = stepper.prefill()
    n = 0
    for i in range(max_new):
        nxt = chooser(logits)
        if output_logprobs:
            lps[:, i] = torch.log_softmax(logits.float(), dim=-1).gather(1, nxt[:, None]).squeeze(1)
        if track:
            nxt = nxt.masked_fill(finished, pad)
            lengths += ~finished
            if eos is not None:
                finished |= nxt == eos
        out[:, i] = nxt
        n = i + 1
        if callback is not None:
            stop = callback(i, nxt)
            if stop is not None:
                finished |= torch.as_tensor(stop, dtype=torch.bool, device=device)
        if i == max_new - 1:
            break
        if track and (callback is not None or (i + 1) % check_every == 0) and bool(finished.all()):
            break
        chooser.note(nxt)
        logits = stepper.step(nxt)
    if not track:
        lengths.fill_(n)
    return GenerateOutput(out[:, :n], lengths, lps[:, :n] if lps is not None else None, finished=finished)


def _beam_search(
    stepper, chooser: _Chooser, B: int, W: int, max_new: int, eos: int | None, pad: int, length_penalty: float
) -> GenerateOutput:
    """Beam search with HF's bookkeeping: keep the top 2W continuations of all W beams by summed
    log-probability; those among the top W that end in EOS become finished hypotheses (score
    normalised by generated length ** length_penalty); the best W others keep running. An item is
    done when it holds W finished hypotheses and the best running beam cannot beat the worst of them
    (HF ``early_stopping=False``). At the length limit the running beams are finished too."""
    device = stepper.device
    logits = stepper.prefill()  # (B, V): the prompt is run once, then each row repeated W times
    stepper.expand(W)
    chooser.reorder(torch.arange(B, device=device).repeat_interleave(W))
    logits = logits.repeat_interleave(W, dim=0)
    V = logits.shape[-1]
    beam_scores = torch.full((B, W), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # identical beams at the start: only the first may expand
    seqs = torch.full((B, W, max_new), pad, dtype=torch.long, device=device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    offsets = torch.arange(B, device=device)[:, None] * W
    for step in range(max_new):
        gen_len = step + 1
        logp = chooser.process(torch.log_softmax(logits.float(), dim=-1))  # (B*W, V)
        total = (logp.view(B, W, V) + beam_scores[:, :, None]).view(B, W * V)
        top_scores, top_idx = torch.topk(total, 2 * W, dim=-1)  # (B, 2W)
        top_beam, top_tok = top_idx // V, top_idx % V
        last = step == max_new - 1
        ts, tb, tt = top_scores.tolist(), top_beam.tolist(), top_tok.tolist()
        new_beam = torch.zeros(B, W, dtype=torch.long)
        new_tok = torch.full((B, W), pad, dtype=torch.long)
        new_score = torch.full((B, W), float("-inf"))
        for b in range(B):
            if done[b]:
                new_score[b] = 0.0  # keep it alive (ignored) so the tensors stay well defined
                continue
            k = 0
            for rank in range(2 * W):
                s, beam, tok = ts[b][rank], tb[b][rank], tt[b][rank]
                if s == float("-inf"):
                    break
                if eos is not None and tok == eos:
                    if rank < W:  # only the top W may finish (HF)
                        hyp = seqs[b, beam, :gen_len].clone()
                        hyp[step] = tok
                        finished[b].append((s / gen_len**length_penalty, hyp))
                    continue
                if k < W:
                    new_beam[b, k], new_tok[b, k], new_score[b, k] = beam, tok, s
                    k += 1
                if k == W:
                    break
            finished[b].sort(key=lambda h: -h[0])
            del finished[b][W:]
            if len(finished[b]) == W and k > 0:
                best_running = float(new_score[b, 0]) / gen_len**length_penalty
                if finished[b][-1][0] >= best_running:
                    done[b] = True
        if last or all(done):
            break
        new_beam, new_tok, new_score = new_beam.to(device), new_tok.to(device), new_score.to(device)
        flat = (new_beam + offsets).view(-1)
        seqs = seqs.view(B * W, max_new).index_select(0, flat).view(B, W, max_new)
        seqs[:, :, step] = new_tok
        beam_scores = new_score
        stepper.reorder(flat)
        chooser.reorder(flat)
        nxt = new_tok.view(-1)
        chooser.note(nxt)
        logits = stepper.step(nxt)
    # Finish: running beams of unfinished items compete with their finished hypotheses.
    n_steps = step + 1
    if not all(done):
        if last:  # the length limit: candidates of this last step end here
            for b in range(B):
                if done[b]:
                    continue
                for rank in range(W):
                    s, beam, tok = ts[b][rank], tb[b][rank], tt[b][rank]
                    if s == float("-inf") or (eos is not None and tok == eos):
                        continue  # EOS candidates were added above
                    hyp = seqs[b, beam, :n_steps].clone()
                    hyp[step] = tok
                    finished[b].append((s / n_steps**length_penalty, hyp))
    tokens = torch.full((B, n_steps), pad, dtype=torch.long, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    scores = torch.zeros(B, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    for b in range(B):
        score, hyp = max(finished[b], key=lambda h: h[0])
        tokens[b, : len(hyp)] = hyp
        lengths[b] = len(hyp)
        scores[b] = score
        ended[b] = eos is not None and int(hyp[-1]) == eos
    return GenerateOutput(tokens, lengths, None, scores, ended)


# ----------------------------------------------------------------------------------------------
# Text in, text out


def encode_prompt(tokenizer, text: str, model, add_bos: bool | None = None) -> list[int]:
    """Prompt ids for a decoder: the start token first (the model's ``text_start_id``, else BOS;
    see :func:`~lmforge.infer.score.text_start_id`) when there is one and ``add_bos`` is not False."""
    from lmforge.infer.score import encode_for_decoder

    ids = encode_for_decoder(tokenizer, text, False if add_bos is False else None, model=model)
    if not ids:
        eos = special_id(tokenizer, "eos", model)
        if eos is None:
            raise LMForgeError("empty prompt and the tokenizer has no BOS / EOS token to start from; give some text")
        ids = [eos]
    return ids


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and mask from lists of ids, padded on ``side``."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        if side == "left":
            ids[i, L - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, L - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """Text of generated ids, special tokens left out when the tokenizer can do that."""
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(ids)


class _TextTracker:
    """Incremental decoding of one row: emits text that is final (not a partial UTF-8 character and
    not possibly the start of a stop string) and detects stop strings."""

    def __init__(self, tokenizer, stop: Sequence[str], eos: int | None):
        self.tok, self.stop, self.eos = tokenizer, [s for s in stop if s], eos
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        if self.stopped:
            return ""
        if self.eos is not None and token == self.eos:
            self.stopped = True
            return self.flush()
        self.ids.append(token)
        self.text = decode_text(self.tok, self.ids)
        for s in self.stop:
            j = self.text.find(s)
            if j >= 0:
                self.text = self.text[:j]
                self.stopped = True
                return self.flush()
        safe = len(self.text) - self.hold
        if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
            safe = min(safe, len(self.text.rstrip("\ufffd")))
        if safe > self.emitted:
            delta, self.emitted = self.text[self.emitted : safe], safe
            return delta
        return ""

    def flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] | str | None = None,
    seed: int | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    stream: Callable[[int, str], None] | None = None,
    do_sample: bool | None = None,
    add_bos: bool | None = None,
    batch_size: int | None = None,
    use_cache: bool = True,
) -> list[Completion]:
    """Complete each prompt (for an encoder-decoder: the source) and return :class:`Completion` s.

    ``temperature=0`` (or ``do_sample=False``) is greedy; otherwise sampling with ``top_k`` /
    ``top_p`` / ``repetition_penalty`` from a generator seeded with ``seed``. ``num_beams > 1`` is
    beam search. ``stop``: strings that end a completion (not included in its text).
    ``stream(i, text)`` receives prompt i's new text as it is generated (not with beam search).
    Decoder prompts start with the model's start token (:func:`encode_prompt`; ``add_bos=False``
    leaves it out), are left-padded and run in batches of ``batch_size`` (default: all at once).
    """
    SamplingOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        num_beams=num_beams,
        length_penalty=length_penalty,
        batch_size=batch_size,
    )  # refuse bad options before any work
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        return []
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop or [])
    arch = _arch(model)
    device = next(model.parameters()).device
    eos = special_id(tokenizer, "eos", model)
    pad = special_id(tokenizer, "pad", model)
    if pad is None:
        pad = eos if eos is not None else 0
    if arch == "decoder":
        encoded = [encode_prompt(tokenizer, p, model, add_bos) for p in prompts]
    else:
        from lmforge.infer.score import encode_source

        encoded = [encode_source(tokenizer, p, model) or [pad] for p in prompts]
    if do_sample is None:
        do_sample = temperature > 0 and num_beams == 1
    generator = make_generator(seed, device) if do_sample else None
    bs = batch_size or len(prompts)
    results: list[Completion] = []
    for start in range(0, len(prompts), bs):
        chunk = encoded[start : start + bs]
        ids, mask = pad_batch(chunk, pad, "left" if arch == "decoder" else "right", device)
        trackers = [_TextTracker(tokenizer, stop, eos) for _ in chunk]

        def follow(step, tokens, trackers=trackers, offset=start):  # stream text, stop at stop strings
            stops = []
            for j, (tr, t) in enumerate(zip(trackers, tokens.tolist())):
                delta = tr.add(t)
                if delta and stream is not None:
                    stream(offset + j, delta)
                stops.append(tr.stopped)
            return stops

        callback = follow if num_beams == 1 and (stream is not None or stop) else None
        out = generate_ids(
            model,
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            num_beams=num_beams,
            length_penalty=length_penalty,
            eos_id=eos,
            pad_id=pad,
            generator=generator,
            use_cache=use_cache,
            callback=callback,
        )
        for j, toks in enumerate(out.token_lists()):
            tr = trackers[j]
            if callback is not None:
                if stream is not None:
                    rest = tr.flush()
                    if rest:
                        stream(start + j, rest)
                text = tr.text
                stopped_by_string = tr.stopped and not (eos is not None and toks and toks[-1] == eos)
            else:
                body = toks[:-1] if (eos is not None and toks and toks[-1] == eos) else toks
                text = decode_text(tokenizer, body)
                stopped_by_string = False
                if stop:
                    for s in stop:
                        k = text.find(s)
                        if k >= 0:
                            text, stopped_by_string = text[:k], True
            if stopped_by_string:
                reason = "stop"
            elif eos is not None and toks and toks[-1] == eos:
                reason = "eos"
            else:
                reason = "length"
            score = float(out.scores[j]) if out.scores is not None else None
            results.append(Completion(prompts[start + j], text, toks, reason, score))
    return results


# ----------------------------------------------------------------------------------------------
# Fill-mask (encoders)


@torch.inference_mode()
def fill_mask_ids(
    model, input_ids, mask_id: int | None = None, top_k: int = 5, token_type_ids: torch.Tensor | None = None
) -> list[list[tuple[int, float]]]:
    """Top-k (token id, probability) candidates for each ``mask_id`` position of one sequence,
    left to right, from a masked LM's single forward pass."""
    if _arch(model) != "encoder":
        raise LMForgeError("fill-mask needs an encoder (masked LM); for a decoder use generate")
    mask_id = mask_id if mask_id is not None else model.config.mask_id
    if mask_id is None:
        raise LMForgeError("the model has no [MASK] token id (mask_id); pass mask_id=")
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)
    positions = (ids[0] == mask_id).nonzero().flatten()
    if len(positions) == 0:
        raise LMForgeError("no [MASK] token in the input; put the mask token where a word should be predicted")
    with eval_mode(model):
        logits = model(ids, token_type_ids=token_type_ids).logits[0, positions].float()  # (M, V)
    probs = logits.softmax(dim=-1)
    p, i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [list(zip(ii, pp)) for ii, pp in zip(i.tolist(), p.tolist())]


def _token_text(tokenizer, i: int) -> str:
    f = getattr(tokenizer, "id_to_token", None)
    if f is not None:
        t = f(i)
        if t is not None:
            return t
    return tokenizer.decode([i])


def _encode_with_masks(model, tokenizer, text: str, mask_token: str) -> list[int]:
    from lmforge.infer.score import encode_for_encoder

    mask_id = special_id(tokenizer, "mask", model)
    if mask_id is None:
        raise LMForgeError("the tokenizer / model has no [MASK] token")
    ids = encode_for_encoder(tokenizer, text, model)
    if mask_id in ids or mask_token not in text:
        return ids
    # the tokenizer did not map the mask string to its id: encode the pieces around it
    specials = {special_id(tokenizer, n, model) for n in ("cls", "sep", "bos", "eos")} - {None}
    out: list[int] = []
    for k, piece in enumerate(text.split(mask_token)):
        if k:
            out.append(mask_id)
        out += [t for t in tokenizer.encode(piece.strip()) if t not in specials] if piece.strip() else []
    cls, sep = special_id(tokenizer, "cls", model), special_id(tokenizer, "sep", model)
    return ([cls] if cls is not None else []) + out + ([sep] if sep is not None else [])


def fill_mask(model, tokenizer, text: str, top_k: int = 5, mask_token: str | None = None) -> list[list[dict]]:
    """For each mask in ``text``, the ``top_k`` most likely tokens:
    ``[{"token": str, "id": int, "prob": float}, ...]`` per mask, left to right.

    ``mask_token`` is how the mask is written in ``text``; by default ``[MASK]`` or the tokenizer's own
    spelling (``<mask>`` for a BPE tokenizer) both work."""
    mask_id = special_id(tokenizer, "mask", model)
    if mask_id is None:
        raise LMForgeError("the tokenizer / model has no [MASK] token")
    own = _token_text(tokenizer, mask_id)
    if mask_token is None:
        mask_token = own
        if "[MASK]" in text and own != "[MASK]":
            text = text.replace("[MASK]", own)
    ids = _encode_with_masks(model, tokenizer, text, mask_token)
    cands = fill_mask_ids(model, ids, mask_id, top_k)
    return [[{"token": _token_text(tokenizer, i), "id": i, "prob": p} for i, p in c] for c in cands]
