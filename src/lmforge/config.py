"""Typed, validated, serialisable configuration.

``ModelConfig`` describes any of the three model families. Configs round-trip through JSON
(and YAML), accept dotted overrides from the command line (``model.n_layer=6``), and refuse
bad values with a :class:`~lmforge.errors.ConfigError` that names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from lmforge.errors import ConfigError

ARCHITECTURES = ("decoder", "encoder", "encoder-decoder", "xlnet")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "relu2", "silu", "swiglu", "geglu", "geglu_tanh", "reglu")
GATED = {
    "swiglu": "silu",
    "geglu": "gelu",
    "geglu_tanh": "gelu_tanh",
    "reglu": "relu",
}  # gated FFN -> its gate's activation
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "rope", "none", "relative")  # relative: XLNet's (Transformer-XL)
INITS = ("gpt2", "fan_in")
MAX_SOFTCAP = 1e4  # far beyond any logit a softcap is meant for, and z / cap stays a normal fp16 / fp32 number


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


INT_LIMIT = 2**63  # every integer field must fit in int64, as torch and numpy need


def _whole(value: Any, name: str) -> int:
    """An exact integer from an int, an integral float or a string such as ``"12"`` / ``"1e3"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is not a whole number")
    if isinstance(value, str):
        text = value.strip()
        try:
            return _whole(int(text), name)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if isinstance(value, float):
        if not value.is_integer():  # fractions, NaN and infinities
            raise ConfigError(f"{name}: {value!r} is not a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise ConfigError(f"{name}: {value!r} is not a whole number")
    if abs(value) >= INT_LIMIT:
        raise ConfigError(f"{name}: {value} is too large (at most {INT_LIMIT - 1})")
    return value


def _finite(value: Any, name: str) -> float:
    """A finite float from a number or a string; NaN and infinities are refused."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is not a number")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    return x


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from JSON, YAML or a command-line string) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], name)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        (inner, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, inner, name) for v in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        try:
            return tp.from_dict(value, prefix=f"{name}.")
        except ConfigError as e:  # name the field as the user spells it: model.n_layer
            if str(e).startswith(f"{name}."):
                raise
            raise ConfigError(f"{name}.{e}") from None
    if tp is int:
        return _whole(value, name)
    if tp is float:
        return _finite(value, name)
    if tp is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: {value!r} is not a valid bool")
        return bool(value)
    if tp is str:
        return str(value)
    return value


class ConfigBase:
    """Mixin for config dataclasses: dict / JSON / YAML round trip, overrides, validation.

    Every field is converted to its annotated type when the config is made, however it was made
    (``from_dict``, keyword arguments, ``replace``): integers must be whole, floats finite, and a
    bad value is a :class:`ConfigError` naming the field (``section`` + name) before ``validate``
    checks ranges.
    """

    section: ClassVar[str] = ""  # the prefix of its field names in messages, e.g. "train."

    def validate(self) -> None:  # overridden by subclasses
        pass

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            value = _coerce(getattr(self, f.name), hints[f.name], self.section + f.name)
            object.__setattr__(self, f.name, value)  # frozen subclasses too
        self.validate()

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = ""):
        hints = _hints(cls)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"{prefix}{unknown[0]}: unknown field of {cls.__name__}; known fields: {', '.join(sorted(names))}"
            )
        kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in d.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, ConfigBase) else (list(v) if isinstance(v, tuple) else v)
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path):
        p = Path(path_or_text)
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            if not p.is_file():
                raise ConfigError(f"{p}: config file not found")
            text = p.read_text(encoding="utf-8")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p if p.exists() else 'config'}: invalid JSON ({e})") from None
        return cls.from_dict(d)

    @classmethod
    def from_file(cls, path: str | Path):
        """Load from ``.json`` or ``.yaml`` / ``.yml``."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        if p.suffix in (".yaml", ".yml"):
            import yaml

            try:
                d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(d, dict):
                raise ConfigError(f"{p}: expected a mapping at the top level")
            return cls.from_dict(d)
        return cls.from_json(p)

    def replace(self, **changes):
        """A validated copy with some fields changed (values may be strings, as from a CLI)."""
        d = self.to_dict()
        d.update(changes)
        return type(self).from_dict(d)

    def override(self, dotted: dict[str, Any]):
        """Apply ``{"model.n_layer": "6", "train.lr": "1e-3"}``-style overrides to nested configs."""
        d = self.to_dict()
        for key, value in dotted.items():
            node = d
            parts = key.split(".")
            for part in parts[:-1]:
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"{key}: no such config section {part!r}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"{key}: unknown field; known fields here: {', '.join(sorted(node))}")
            node[parts[-1]] = value
        return type(self).from_dict(d)


def _positive(cfg, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if v is not None and v <= 0:
            raise ConfigError(f"{n}: must be positive, got {v}")


@dataclass
class ModelConfig(ConfigBase):
    """One config for all three families; derived fields are properties.

    Layer counts: ``n_layer`` is the depth of a single-stack model (decoder or encoder). An
    encoder-decoder uses ``n_encoder_layer`` / ``n_decoder_layer``, each defaulting to ``n_layer``.
    """

    arch: str = "decoder"
    vocab_size: int = 50304
    max_positions: int = 1024
    n_layer: int = 12
    n_encoder_layer: int | None = None
    n_decoder_layer: int | None = None
    d_model: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None: as many as n_head (MHA); 1: MQA; between: GQA
    d_ff: int | None = None  # None: 4 * d_model (or 8/3 * d_model rounded to 64 for gated FFNs)
    activation: str = "gelu"
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    positions: str = "learned"
    rope_base: float = 10000.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    share_embeddings: bool = True  # encoder-decoder: one token embedding for both stacks (False: one each)
    scale_attention: bool = True  # scores Q K^T / sqrt(head size); False: unscaled (GPT-2 scale_attn_weights=False)
    # RMSNorm (learned gain, one per head size, shared by the heads) of each query and key head before
    # RoPE and the scores, in self- and cross-attention (OLMo 2, Gemma 3)
    qk_norm: bool = False
    lm_head_bias: bool = False  # BERT's MLM decoder and BART's final_logits_bias have one
    # the vocabulary head's logits z become cap * tanh(z / cap), smooth and inside (-cap, cap) (Gemma 2
    # uses 30), in training and inference alike; None: plain logits
    logit_softcap: float | None = None
    embedding_norm: bool = False  # a norm right after the embeddings (BERT, BART)
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (Transformer, Marian)
    type_vocab_size: int = 0  # segment (token type) embeddings; BERT uses 2
    mlm_head: bool = True  # encoder: dense + act + norm transform before the tied decoder
    pooler: bool = False  # encoder: dense + tanh over [CLS] (implied by nsp_head)
    nsp_head: bool = False  # encoder: pooler + next-sentence classifier
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    mask_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None
    decoder_start_id: int | None = None
    # decoder: the token a text follows when it is scored or generated from (None: the tokenizer's
    # BOS). lmforge's causal pretraining sets its document separator, EOS: the model never saw BOS.
    text_start_id: int | None = None
    init_std: float = 0.02
    # "gpt2": every matrix N(0, init_std), residual projections / sqrt(2 * layers); "fan_in": every
    # linear layer N(0, 1 / fan_in) (T5's scale), which a small encoder-decoder needs to use its source
    init: str = "gpt2"
    # the output projections of attention and MLP (attn.proj, mlp.proj) start at zero, so every
    # block starts as the identity (modded-nanoGPT); applied after ``init``
    zero_init_proj: bool = False

    # ---- derived fields -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def gated(self) -> bool:
        return self.activation in GATED

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.gated:  # keep the parameter count of a 4x FFN: 2/3 * 4d, rounded up to 64
            return (int(8 * self.d_model / 3) + 63) // 64 * 64
        return 4 * self.d_model

    @property
    def has_pooler(self) -> bool:
        return self.arch == "encoder" and (self.pooler or self.nsp_head)

    @property
    def encoder_layers(self) -> int:  # XLNet's one bidirectional stack counts as an encoder
        if self.arch == "decoder":
            return 0
        if self.arch in ("encoder", "xlnet"):
            return self.n_layer
        return self.n_encoder_layer if self.n_encoder_layer is not None else self.n_layer

    @property
    def decoder_layers(self) -> int:
        if self.arch in ("encoder", "xlnet"):
            return 0
        if self.arch == "decoder":
            return self.n_layer
        return self.n_decoder_layer if self.n_decoder_layer is not None else self.n_layer

    # ---- validation ------------------------------------------------------------------
    def validate(self) -> None:
        choices = {
            "arch": ARCHITECTURES,
            "activation": ACTIVATIONS,
            "norm": NORMS,
            "norm_position": NORM_POSITIONS,
            "positions": POSITIONS,
            "init": INITS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: unknown value {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        _positive(
            self,
            "vocab_size",
            "max_positions",
            "n_layer",
            "n_encoder_layer",
            "n_decoder_layer",
            "d_model",
            "n_head",
            "n_kv_head",
            "d_ff",
            "norm_eps",
            "rope_base",
            "init_std",
        )
        if self.logit_softcap is not None and not 0 < self.logit_softcap <= MAX_SOFTCAP:
            raise ConfigError(
                f"logit_softcap: must be in (0, {MAX_SOFTCAP:g}] or none, got {self.logit_softcap} (Gemma 2 uses 30)"
            )
        if self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size: must be >= 0, got {self.type_vocab_size}")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"d_model: {self.d_model} is not divisible by n_head={self.n_head}; "
                f"pick d_model a multiple of n_head (e.g. {self.n_head * max(1, round(self.d_model / self.n_head))})"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"n_kv_head: n_head={self.n_head} is not a multiple of n_kv_head={self.kv_heads}; "
                f"use a divisor of n_head"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"positions: RoPE needs an even head size, got d_model/n_head = {self.head_dim}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"positions: sinusoidal positions need an even d_model, got {self.d_model}")
        for name in ("dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {v}")
        if self.arch != "encoder-decoder" and not self.share_embeddings:
            raise ConfigError("share_embeddings: only an encoder-decoder has two token embeddings; set it true")
        if self.arch != "encoder" and self.nsp_head:
            raise ConfigError("nsp_head: only an encoder has a next-sentence head; set nsp_head=false")
        if self.arch == "xlnet" or self.positions == "relative":
            self._validate_xlnet()
        for name in ("pad_id", "bos_id", "eos_id", "mask_id", "cls_id", "sep_id", "decoder_start_id", "text_start_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                raise ConfigError(f"{name}: {v} is outside the vocabulary [0, {self.vocab_size})")

    def _validate_xlnet(self) -> None:
        """XLNet's fixed recipe (HF ``XLNetLMHeadModel``): relative positions, post-LayerNorm, a plain
        FFN, multi-head attention, segments in the attention (not as embeddings)."""
        if self.arch != "xlnet":
            raise ConfigError(
                f"positions: relative positions are XLNet's; set model.arch=xlnet or pick one of {', '.join(POSITIONS[:4])}"
            )
        fixes = [
            (self.positions == "relative", "positions", "relative"),
            (self.norm == "layernorm", "norm", "layernorm"),
            (self.norm_position == "post", "norm_position", "post"),
            (not self.gated, "activation", "gelu"),
            (self.kv_heads == self.n_head, "n_kv_head", "none"),
            (not self.qk_norm, "qk_norm", "false"),
            (self.scale_attention, "scale_attention", "true"),
            (not self.embedding_norm, "embedding_norm", "false"),
            (not self.scale_embeddings, "scale_embeddings", "false"),
            (self.type_vocab_size == 0, "type_vocab_size", "0 (segments enter XLNet's attention, seg_embed)"),
            (not (self.pooler or self.nsp_head), "pooler", "false and nsp_head=false"),
            (
                not self.zero_init_proj,
                "zero_init_proj",
                "false (XLNet's projections are not GPT's attn.proj / mlp.proj)",
            ),
        ]
        for ok, name, fix in fixes:
            if not ok:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not part of XLNet; set model.{name}={fix}")

    # ---- presets -----------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> ModelConfig:
        if name not in MODEL_PRESETS:
            raise ConfigError(f"preset: unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
        d = dict(MODEL_PRESETS[name])
        d.update(overrides)
        return cls.from_dict(d)


# What every XLNet shares (HF XLNetLMHeadModel): relative positions, post-LayerNorm, a biased head
XLNET_RECIPE: dict[str, Any] = dict(
    arch="xlnet", positions="relative", norm_position="post", norm_eps=1e-12, lm_head_bias=True
)

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # a few-second model for tests and CI
    "gpt-tiny": dict(
        arch="decoder", vocab_size=256, max_positions=64, n_layer=2, d_model=64, n_head=4, activation="gelu_tanh"
    ),
    # the GPT-2 124M shape (vocabulary padded to a multiple of 64 as nanoGPT does: 50304)
    "gpt2-small": dict(
        arch="decoder", vocab_size=50257, max_positions=1024, n_layer=12, d_model=768, n_head=12, activation="gelu_tanh"
    ),
    # the LLaMA recipe at toy size: RoPE, RMSNorm, SwiGLU, GQA, no biases, untied head
    "llama-tiny": dict(
        arch="decoder",
        vocab_size=256,
        max_positions=128,
        n_layer=2,
        d_model=64,
        n_head=4,
        n_kv_head=2,
        activation="swiglu",
        norm="rmsnorm",
        norm_eps=1e-6,
        positions="rope",
        bias=False,
        tie_embeddings=False,
    ),
    "bert-tiny": dict(
        arch="encoder",
        vocab_size=256,
        max_positions=128,
        n_layer=2,
        d_model=64,
        n_head=4,
        norm_position="post",
        norm_eps=1e-12,
        embedding_norm=True,
        type_vocab_size=2,
        lm_head_bias=True,
        nsp_head=True,
    ),
    "bert-base": dict(
        arch="encoder",
        vocab_size=30522,
        max_positions=512,
        n_layer=12,
        d_model=768,
        n_head=12,
        norm_position="post",
        norm_eps=1e-12,
        embedding_norm=True,
        type_vocab_size=2,
        lm_head_bias=True,
        nsp_head=True,
        dropout=0.1,
        attention_dropout=0.1,
    ),
    # XLNet (two-stream attention, relative positions, permutation LM) at toy size
    "xlnet-tiny": dict(XLNET_RECIPE, vocab_size=256, max_positions=128, n_layer=2, d_model=64, n_head=4),
    "seq2seq-tiny": dict(arch="encoder-decoder", vocab_size=256, max_positions=128, n_layer=2, d_model=64, n_head=4),
    # Vaswani et al. 2017 "base": 6+6 layers, 512 wide, 8 heads, FFN 2048, sinusoidal, post-norm
    "transformer-base": dict(
        arch="encoder-decoder",
        vocab_size=37000,
        max_positions=1024,
        n_layer=6,
        d_model=512,
        n_head=8,
        d_ff=2048,
        activation="relu",
        norm_position="post",
        positions="sinusoidal",
        scale_embeddings=True,
        dropout=0.1,
    ),
}
