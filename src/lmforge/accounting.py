"""Compute accounting for any :class:`~lmforge.config.ModelConfig`.

Everything here is arithmetic on the config, so the
training engine can import it for FLOPs per token and MFU without pulling in the planner.

* :func:`count_params` - exact parameter counts (equal to ``sum(p.numel())`` of the built model),
  split into embedding and non-embedding parameters.
* :func:`count_flops` - FLOPs per sequence and per token, both by the detailed count of Chinchilla's
  Appendix F (generalised to GQA, gated FFNs and encoder-decoders) and by the 6N rule
  (+ attention, as in PaLM's appendix B).
* :func:`estimate_memory` - training memory per device under DDP or FSDP, with or without
  activation checkpointing.
Devices, their peaks, MFU, wall time and cost are :mod:`lmforge.hardware`; the report of one
model that ``lmforge plan --model`` prints is :mod:`lmforge.plan.report`.

Conventions
-----------
*Embedding parameters* are the lookup tables: token, learned-position and segment embeddings
(Kaplan et al. 2020 exclude exactly these from N). Everything else is *non-embedding*, including
an untied output head, which is a real matmul per token (Chinchilla counts it too). A tied head
adds no parameters, but its logits matmul still costs FLOPs; the 6N rule therefore uses the
*compute parameters*: the non-embedding parameters plus the tied output matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------


def _linear(cfg: ModelConfig, n_in: int, n_out: int) -> int:
    return n_in * n_out + (n_out if cfg.bias else 0)


def _norm(cfg: ModelConfig) -> int:
    # LayerNorm: weight (+ bias iff cfg.bias); RMSNorm: weight only
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def _qk_norm(cfg: ModelConfig) -> int:
    return 2 * cfg.head_dim if cfg.qk_norm else 0  # an RMSNorm gain for the query and the key heads


def _self_attention(cfg: ModelConfig) -> int:
    inner = cfg.n_head * cfg.head_dim
    return (
        _linear(cfg, cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim)
        + _linear(cfg, inner, cfg.d_model)
        + _qk_norm(cfg)
    )


def _cross_attention(cfg: ModelConfig) -> int:
    inner = cfg.n_head * cfg.head_dim
    return (
        _linear(cfg, cfg.d_model, inner)  # q from the decoder
        + _linear(cfg, cfg.d_model, 2 * cfg.kv_heads * cfg.head_dim)  # k, v from the encoder output
        + _linear(cfg, inner, cfg.d_model)
        + _qk_norm(cfg)
    )


def _mlp(cfg: ModelConfig) -> int:
    width = cfg.ffn_dim * (2 if cfg.gated else 1)  # gated FFNs fuse value and gate into one Linear
    return _linear(cfg, cfg.d_model, width) + _linear(cfg, cfg.ffn_dim, cfg.d_model)


def _xlnet_attention(cfg: ModelConfig) -> int:
    inner = cfg.n_head * cfg.head_dim  # q, k, v, r, o without biases; r_w / r_r / r_s biases, seg_embed
    return 5 * cfg.d_model * inner + 5 * inner


def _block(cfg: ModelConfig, cross: bool) -> int:
    attention = _xlnet_attention(cfg) if cfg.arch == "xlnet" else _self_attention(cfg)
    n = 2 * _norm(cfg) + attention + _mlp(cfg)
    if cross:
        n += _norm(cfg) + _cross_attention(cfg)
    return n


@dataclass
class ParamCount:
    """Exact parameter counts; ``breakdown`` names each part (all entries sum to ``total``)."""

    total: int
    embedding: int
    non_embedding: int
    compute: int  # non-embedding + a tied output matrix: the N of the 6N rule
    breakdown: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stack_parts(cfg: ModelConfig, name: str, n_layers: int, cross: bool, segments: bool) -> dict[str, int]:
    """Parameters of one embedding + blocks + final-norm stack (the token embedding excluded)."""
    d = cfg.d_model
    parts = {
        f"{name}.position_embedding": cfg.max_positions * d if cfg.positions == "learned" else 0,
        f"{name}.segment_embedding": cfg.type_vocab_size * d if segments else 0,
        f"{name}.embedding_norm": _norm(cfg) if cfg.embedding_norm else 0,
        f"{name}.blocks": n_layers * _block(cfg, cross),
        f"{name}.final_norm": _norm(cfg) if cfg.norm_position == "pre" else 0,
    }
    return parts


def _head_parts(cfg: ModelConfig) -> dict[str, int]:
    """Output heads: the LM head of a decoder / encoder-decoder; MLM head, pooler, NSP head of an encoder."""
    d, v = cfg.d_model, cfg.vocab_size
    out = (0 if cfg.tie_embeddings else v * d) + (v if cfg.lm_head_bias else 0)
    if cfg.arch != "encoder":
        return {"lm_head": out}
    return {
        "mlm_head": _linear(cfg, d, d) + _norm(cfg) + out if cfg.mlm_head else 0,
        "pooler": _linear(cfg, d, d) if cfg.has_pooler else 0,
        "nsp_head": _linear(cfg, d, 2) if cfg.nsp_head else 0,
    }


def _is_embedding(part: str) -> bool:
    return part.endswith("_embedding")


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact parameter count of ``build_model(cfg)``, from the config alone."""
    d, v = cfg.d_model, cfg.vocab_size
    parts: dict[str, int] = {"token_embedding": v * d}  # shared by encoder and decoder
    if cfg.encoder_layers:
        parts.update(_stack_parts(cfg, "encoder", cfg.encoder_layers, cross=False, segments=True))
    if cfg.arch == "xlnet":
        parts["encoder.mask_emb"] = d  # the query stream's start
    if cfg.decoder_layers:
        parts.update(
            _stack_parts(cfg, "decoder", cfg.decoder_layers, cross=cfg.arch == "encoder-decoder", segments=False)
        )
    if not cfg.share_embeddings:  # an encoder-decoder whose decoder has its own token embedding
        parts["decoder.token_embedding"] = v * d
    parts.update(_head_parts(cfg))
    total = sum(parts.values())
    embedding = sum(n for k, n in parts.items() if _is_embedding(k))
    has_logits = cfg.arch != "encoder" or cfg.mlm_head
    tied_output = v * d if (cfg.tie_embeddings and has_logits) else 0
    return ParamCount(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        compute=total - embedding + tied_output,
        breakdown={k: n for k, n in parts.items() if n},
    )


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def _attention_flops(cfg: ModelConfig, n_q: int, n_kv: int, cross: bool) -> dict[str, float]:
    """Forward FLOPs of one attention layer for ``n_q`` queries over ``n_kv`` keys (Appendix F terms).

    Like Appendix F, the full ``n_q x n_kv`` score matrix is counted even under a causal mask.
    """
    hk = cfg.n_head * cfg.head_dim
    kv = 2 * cfg.kv_heads * cfg.head_dim
    prefix = "cross_" if cross else ""
    return {
        # self-attention projects q, k, v from the same tokens; cross-attention projects k, v once per source token
        f"{prefix}qkv": 2 * cfg.d_model * (n_q * hk + n_kv * kv),
        f"{prefix}attention_logits": 2 * n_q * n_kv * hk,
        f"{prefix}softmax": 3 * cfg.n_head * n_q * n_kv,
        f"{prefix}attention_values": 2 * n_q * n_kv * hk,
        f"{prefix}attention_output": 2 * n_q * hk * cfg.d_model,
    }


def _ffn_flops(cfg: ModelConfig, n: int) -> float:
    # value (+ gate) projection d -> f (2f when gated), then f -> d
    return 2 * n * cfg.d_model * cfg.ffn_dim * (3 if cfg.gated else 2)


def _add(total: dict[str, float], part: dict[str, float], times: float = 1.0) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + times * v


@dataclass
class FlopCount:
    """FLOPs for one sequence (``tokens`` positions); backward = 2x forward, so training = 3x forward.

    ``forward_breakdown`` holds the detailed count (Appendix F terms); ``rule_6n`` and
    ``rule_6n_attention`` are the training FLOPs per sequence of the 6N rule and of
    6N + 12 n_layer n_ctx d_attn (PaLM), with N the compute parameters.
    """

    tokens: int
    forward_breakdown: dict[str, float]
    rule_6n: float
    rule_6n_attention: float

    def forward(self, embeddings: bool = True, logits: bool = True) -> float:
        """Detailed forward FLOPs per sequence; Chinchilla's Table A4 leaves out embeddings and logits."""
        skip = {k for k, keep in (("embeddings", embeddings), ("logits", logits)) if not keep}
        return sum(v for k, v in self.forward_breakdown.items() if k not in skip)

    def training(self, embeddings: bool = True, logits: bool = True) -> float:
        return 3 * self.forward(embeddings, logits)

    @property
    def forward_per_token(self) -> float:
        return self.forward() / self.tokens

    @property
    def training_per_token(self) -> float:
        return self.training() / self.tokens

    @property
    def rule_6n_per_token(self) -> float:
        return self.rule_6n / self.tokens

    @property
    def rule_6n_attention_per_token(self) -> float:
        return self.rule_6n_attention / self.tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            forward_per_token=self.forward_per_token,
            training_per_token=self.training_per_token,
            rule_6n_per_token=self.rule_6n_per_token,
            rule_6n_attention_per_token=self.rule_6n_attention_per_token,
        )
        return d


def count_flops(
    cfg: ModelConfig, seq_len: int | None = None, tgt_len: int | None = None, mlm_fraction: float = 1.0
) -> FlopCount:
    """FLOPs of one sequence of ``seq_len`` tokens (default ``cfg.max_positions``).

    For an encoder-decoder, ``seq_len`` is the source length and ``tgt_len`` (default ``seq_len``)
    the target length; "per token" then means per position processed (source + target).
    An encoder's MLM head is counted at ``mlm_fraction`` of the positions: every position (1, as a
    plain implementation computes it) or the labelled share, where lmforge's MLM training runs it.
    """
    seq_len = seq_len or cfg.max_positions
    for name, n in (("seq_len", seq_len), ("tgt_len", tgt_len)):
        if n is not None and n <= 0:
            raise ConfigError(f"{name}: must be positive, got {n}")
    if not 0 <= mlm_fraction <= 1:
        raise ConfigError(f"mlm_fraction: must be in [0, 1], got {mlm_fraction}")
    d, v = cfg.d_model, cfg.vocab_size
    enc_len = seq_len if cfg.encoder_layers else 0
    dec_len = (tgt_len or seq_len) if cfg.decoder_layers else 0
    p = count_params(cfg).breakdown
    f: dict[str, float] = {"embeddings": 2.0 * (enc_len + dec_len) * v * d}  # Appendix F: a one-hot matmul
    rule = 0.0
    attn_pairs = 0.0  # sum over layers of (queries x keys), for PaLM's attention term
    if cfg.encoder_layers:
        _add(f, _attention_flops(cfg, enc_len, enc_len, cross=False), cfg.encoder_layers)
        f["ffn"] = f.get("ffn", 0.0) + cfg.encoder_layers * _ffn_flops(cfg, enc_len)
        rule += 6 * enc_len * sum(n for k, n in p.items() if k.startswith("encoder.") and not _is_embedding(k))
        attn_pairs += cfg.encoder_layers * enc_len * enc_len
    if cfg.decoder_layers:
        _add(f, _attention_flops(cfg, dec_len, dec_len, cross=False), cfg.decoder_layers)
        f["ffn"] = f.get("ffn", 0.0) + cfg.decoder_layers * _ffn_flops(cfg, dec_len)
        rule += 6 * dec_len * sum(n for k, n in p.items() if k.startswith("decoder.") and not _is_embedding(k))
        attn_pairs += cfg.decoder_layers * dec_len * dec_len
        if cfg.arch == "encoder-decoder":
            _add(f, _attention_flops(cfg, dec_len, enc_len, cross=True), cfg.decoder_layers)
            attn_pairs += cfg.decoder_layers * dec_len * enc_len
    out_len = dec_len if cfg.arch != "encoder" else (enc_len * mlm_fraction if cfg.mlm_head else 0)
    if cfg.arch == "encoder" and cfg.mlm_head:
        f["mlm_transform"] = 2.0 * out_len * d * d
    f["logits"] = 2.0 * out_len * d * v
    # the 6N rule over the heads: the output matrix (tied or not) and the MLM transform
    head = (v * d + (2 * d * d if cfg.arch == "encoder" else 0)) if out_len else 0
    rule += 6 * out_len * head
    hk = cfg.n_head * cfg.head_dim
    return FlopCount(
        tokens=enc_len + dec_len, forward_breakdown=f, rule_6n=rule, rule_6n_attention=rule + 12 * hk * attn_pairs
    )


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, method: str = "palm") -> float:
    """Training FLOPs per token for MFU and budgets.

    ``"palm"`` (default, the usual MFU convention): 6N + 12 n_layer n_ctx d_attn; ``"6n"``: 6N;
    ``"detailed"``: Chinchilla's Appendix F count (which also charges the embedding lookup as a matmul).
    """
    fc = count_flops(cfg, seq_len)
    per_token = {"palm": fc.rule_6n_attention_per_token, "6n": fc.rule_6n_per_token, "detailed": fc.training_per_token}
    if method not in per_token:
        raise ConfigError(f"method: unknown FLOP counting method {method!r}; choose one of {', '.join(per_token)}")
    return per_token[method]


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

GiB = 1024**3
PRECISIONS = {"bf16": 2, "fp16": 2, "fp32": 4}  # bytes of an activation


@dataclass
class MemoryEstimate:
    """Training memory per device in bytes (AdamW, fp32 master weights, gradients and m & v).

    Under mixed precision (bf16 / fp16 autocast) parameters stay fp32 and activations are 16-bit.
    FSDP shards weights, gradients and optimizer state over ``world_size`` devices and gathers
    about two blocks at a time in the compute dtype. Excludes the CUDA context, allocator
    fragmentation and communication buffers (budget ~10-20% on top).
    """

    strategy: str
    world_size: int
    micro_batch: int
    seq_len: int
    checkpointing: bool
    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _activation_elements(cfg: ModelConfig, n_q: int, n_kv: int, cross: bool, flash: bool) -> tuple[float, float]:
    """(elements stored for backward, bytes of dropout masks) of one block for one sequence.

    Follows Korthikanti et al. 2022 (inputs of every matmul, norm and nonlinearity are kept),
    generalised to GQA and gated FFNs; without a fused (flash) kernel the score and softmax
    matrices are kept too.
    """
    d, hd = cfg.d_model, cfg.head_dim
    hk, kv = cfg.n_head * hd, 2 * cfg.kv_heads * hd
    ffn = cfg.ffn_dim * (3 if cfg.gated else 2)  # activation input(s) and the down-projection input
    elems = n_q * (2 * d + hk + kv + hk)  # norm1 in, qkv in, q, k, v, attention output
    elems += n_q * (2 * d) + n_q * ffn + n_q * d  # norm2 in, fc in, ffn activations; residual out
    scores = cfg.n_head * n_q * n_q
    if cross:  # norm, q input, q, output, and k, v of the encoder memory
        elems += n_q * (2 * d + 2 * hk) + n_kv * kv
        scores += cfg.n_head * n_q * n_kv
    masks = 0.0
    if not flash:
        elems += 2 * scores  # logits and softmax probabilities
        masks += scores if cfg.attention_dropout > 0 else 0
    if cfg.dropout > 0:
        masks += 2 * n_q * d  # one byte per element, after attention and after the FFN
    return elems, masks


def estimate_memory(
    cfg: ModelConfig,
    micro_batch: int = 1,
    seq_len: int | None = None,
    world_size: int = 1,
    strategy: str = "ddp",
    checkpointing: bool = False,
    precision: str = "bf16",
    flash: bool = True,
) -> MemoryEstimate:
    """Training memory per device for ``micro_batch`` sequences of ``seq_len`` tokens."""
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy: unknown {strategy!r}; choose ddp or fsdp")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if micro_batch <= 0 or world_size <= 0:
        raise ConfigError("micro_batch and world_size must be positive")
    seq_len = seq_len or cfg.max_positions
    act = PRECISIONS[precision]
    n = count_params(cfg).total
    shard = world_size if strategy == "fsdp" else 1
    # FSDP all-gathers one block (and prefetches the next) in the compute dtype
    gathered = 2 * _block(cfg, cross=cfg.arch == "encoder-decoder") * act if strategy == "fsdp" else 0.0

    stacks = []  # (layers, queries, keys, cross)
    if cfg.encoder_layers:
        stacks.append((cfg.encoder_layers, seq_len, seq_len, False))
    if cfg.decoder_layers:
        stacks.append((cfg.decoder_layers, seq_len, seq_len, cfg.arch == "encoder-decoder"))
    per_block = [_activation_elements(cfg, q, k, c, flash) for _, q, k, c in stacks]
    if checkpointing:  # keep each block's input; recompute one block at a time in backward
        elems = sum(layers * q * cfg.d_model for layers, q, _, _ in stacks) + max(e for e, _ in per_block)
        masks = max(m for _, m in per_block)
    else:
        elems = sum(layers * e for (layers, *_), (e, _) in zip(stacks, per_block))
        masks = sum(layers * m for (layers, *_), (_, m) in zip(stacks, per_block))
    positions = sum(q for _, q, _, _ in stacks)
    elems += positions * cfg.d_model  # embedding output
    out_len = 0 if (cfg.arch == "encoder" and not cfg.mlm_head) else seq_len
    logits = out_len * cfg.vocab_size * (act + 4)  # logits + fp32 log-softmax for the loss
    activations = micro_batch * (elems * act + masks + logits)
    return MemoryEstimate(
        strategy=strategy,
        world_size=world_size,
        micro_batch=micro_batch,
        seq_len=seq_len,
        checkpointing=checkpointing,
        weights=4.0 * n / shard,
        gradients=4.0 * n / shard,
        optimizer=8.0 * n / shard,
        gathered=float(gathered),
        activations=float(activations),
    )


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------


def human(x: float, unit: str = "") -> str:
    """``1.23e9 -> '1.23B'``, ``human(9.9e14, 'FLOP/s') -> '990 TFLOP/s'``; else scientific notation."""
    if x is None or not math.isfinite(x):
        return str(x)
    space = " " if unit else ""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")):
        if 1 <= abs(float(f"{x / scale:.3g}")) < 1000:
            return f"{x / scale:.3g}{space}{suffix if not unit or suffix != 'B' else 'G'}{unit}"
    return f"{x:.3g}{space}{unit}"


def human_duration(seconds: float) -> str:
    """``42 -> '42 s'``, ``300 -> '5.0 min'``, ``7200 -> '2.0 h'``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def human_bytes(n: float) -> str:
    for scale, suffix in ((GiB, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"
