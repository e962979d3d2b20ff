"""A concrete model shape for a target parameter count.

The rule (Kaplan et al. 2020: at fixed N, shape matters little while the aspect ratio stays in a
broad range; Chinchilla's and LLaMA's shapes sit at d_model / n_layer ~ 64-128):

* head size 64 below d_model 2048 and 128 from there on (as in Chinchilla's Table A9), unless given;
* d_model a multiple of the head size; n_head = d_model / head size; a GQA template keeps its
  number of query heads per key/value head (n_head a multiple of it);
* n_layer such that d_model / n_layer lies in ``aspect`` (default 64-128);
* among those, the config whose exact parameter count (total, or non-embedding for laws that
  count that way) is closest to the target in log space.

The other fields (architecture, vocabulary, norms, activation, positions, ...) come from a template
config; the default is the LLaMA recipe (RoPE, RMSNorm, SwiGLU, no biases, untied head).
"""

from __future__ import annotations

import dataclasses
import math

from lmforge.accounting import count_params
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError

DEFAULT_TEMPLATE = dict(
    arch="decoder",
    vocab_size=32000,
    max_positions=2048,
    activation="swiglu",
    norm="rmsnorm",
    positions="rope",
    bias=False,
    tie_embeddings=False,
)
ASPECT = (64.0, 128.0)
MAX_D_MODEL = 1 << 18


def default_template(vocab_size: int = 32000, seq_len: int = 2048) -> ModelConfig:
    return ModelConfig.from_dict({**DEFAULT_TEMPLATE, "vocab_size": vocab_size, "max_positions": seq_len})


def _head_dim(d_model: int, head_dim: int | None) -> int:
    return head_dim or (64 if d_model < 2048 else 128)


def _group(template: ModelConfig) -> int:
    """Query heads per key/value head of a GQA template (1 otherwise); shapes keep it."""
    return template.n_head // template.kv_heads if template.n_kv_head is not None else 1


def _with_shape(template: ModelConfig, n_layer: int, d_model: int, head_dim: int) -> ModelConfig:
    n_head = d_model // head_dim
    kv = n_head // _group(template) if template.n_kv_head is not None else None
    return dataclasses.replace(
        template,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        n_kv_head=kv,
        d_ff=None,
        n_encoder_layer=None,
        n_decoder_layer=None,
    )


def _count(cfg: ModelConfig, counts: str) -> int:
    pc = count_params(cfg)
    return pc.total if counts == "total" else pc.non_embedding


def smallest_shape(template: ModelConfig, head_dim: int | None = None) -> ModelConfig:
    """One layer, one head (one group of heads for GQA): the smallest model the rule builds."""
    hd = _head_dim(64, head_dim)
    return _with_shape(template, 1, hd * _group(template), hd)


def shape_for(
    n_params: float,
    template: ModelConfig | None = None,
    counts: str = "total",
    aspect: tuple[float, float] = ASPECT,
    head_dim: int | None = None,
) -> ModelConfig:
    """The config (following the module's rule) whose parameter count is closest to ``n_params``."""
    template = template or default_template()
    lo, hi = aspect
    if not 0 < lo <= hi:
        raise ConfigError(f"aspect: need 0 < low <= high, got {aspect}")
    if counts not in ("total", "non_embedding"):
        raise ConfigError(f"counts: unknown {counts!r}; choose total or non_embedding")
    best, best_err = None, math.inf
    d_model = _head_dim(64, head_dim)
    while d_model <= MAX_D_MODEL:
        hd = _head_dim(d_model, head_dim)  # from 2048 on d_model steps by 128 and stays a multiple of it
        if (d_model // hd) % _group(template):  # GQA: whole groups of query heads only
            d_model += hd
            continue
        layers = range(max(1, math.ceil(d_model / hi)), max(1, math.floor(d_model / lo)) + 1)
        # the count is affine in n_layer: two configs give the slope, then solve for n_layer
        c1 = _count(_with_shape(template, 1, d_model, hd), counts)
        slope = _count(_with_shape(template, 2, d_model, hd), counts) - c1
        guess = round(1 + (n_params - c1) / slope)
        for n_layer in {min(max(guess + k, layers.start), layers.stop - 1) for k in (-1, 0, 1)}:
            err = abs(math.log((c1 + (n_layer - 1) * slope) / n_params))
            if err < best_err:
                best, best_err = (n_layer, d_model, hd), err
        if c1 + (layers.start - 1) * slope > 4 * n_params:  # every wider model is larger still
            return _with_shape(template, *best)
        d_model += hd
    raise ConfigError(f"no model shape up to d_model {MAX_D_MODEL} reaches {n_params:.3g} parameters")
