"""LoRA (Hu et al. 2021): learn a low-rank update of frozen linear weights.

A wrapped ``nn.Linear`` computes ``W x + b + (alpha / r) B A dropout(x)`` with ``A`` (r, in)
initialised like a linear layer and ``B`` (out, r) initialised to zero, so training starts from the
pretrained function exactly. Only ``A`` and ``B`` learn (r (in + out) numbers per matrix instead of
in * out). ``merge`` folds ``(alpha / r) B A`` into ``W`` (no inference cost), ``unmerge`` takes it
out again, and ``merge_and_unload`` leaves plain ``nn.Linear`` modules, so the merged model saves
and reloads with :func:`lmforge.save_model` / :func:`lmforge.load_model` and no LoRA code.

Targets are chosen by name: a pattern matches a module whose dotted name ends with it, so
``"attn.qkv"`` selects ``transformer.blocks.3.attn.qkv`` (and the encoder's and decoder's copies of an
encoder-decoder); ``"*"`` matches every linear layer of the backbone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ConfigBase
from lmforge.errors import CheckpointError, ConfigError

DEFAULT_TARGETS = ("attn.qkv", "attn.proj")
LORA_PARAM_NAMES = ("lora_A", "lora_B")


@dataclass
class LoRAConfig(ConfigBase):
    rank: int = 8
    alpha: float | None = None  # None: 2 * rank, so the update's scale alpha / rank stays 2 across ranks
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    section: ClassVar[str] = "lora."

    @property
    def alpha_value(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    def validate(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"lora.rank: must be positive, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"lora.alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("lora.targets: give at least one module name pattern, e.g. attn.qkv")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (``base``) plus the trainable low-rank update (alpha / r) B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` of a linear layer keeps working
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta(self) -> torch.Tensor:
        """The weight update (alpha / r) B A, shaped like ``base.weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, pattern: str) -> bool:
    return pattern == "*" or name == pattern or name.endswith("." + pattern)


def apply_lora(
    model: nn.Module, cfg: LoRAConfig | None = None, exclude: tuple[str, ...] = ("classifier",), **kwargs
) -> list[str]:
    """Wrap the linear layers named by ``cfg.targets`` in :class:`LoRALinear`, in place.

    Returns the wrapped module names. Modules under ``exclude`` (a task head that trains in full)
    are never wrapped. Keyword arguments build the config: ``apply_lora(m, rank=4, targets=["attn.qkv"])``.
    """
    cfg = cfg or LoRAConfig.from_dict(kwargs)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("lora: the model already has LoRA adapters; merge_and_unload it first")
    chosen = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and any(_matches(name, p) for p in cfg.targets)
        and not any(name == e or name.startswith(e + ".") for e in exclude)
    ]
    # A tied output head (lm_head sharing the embedding) is not a linear layer to adapt.
    chosen = [n for n in chosen if not _is_tied(model, n)]
    capped = [n for n in chosen if getattr(model.get_submodule(n), "softcap", None) is not None]
    if capped:  # the adapter's term would be added after the cap: a different model
        raise ConfigError(
            f"lora.targets: {capped[0]} soft-caps its logits (logit_softcap); train it in full or leave it out"
        )
    if not chosen:
        linear = sorted(
            {
                n.rsplit(".blocks.", 1)[-1].split(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, nn.Linear)
            }
        )
        raise ConfigError(
            f"lora.targets: {', '.join(cfg.targets)} matched no linear layer; names here end with: {', '.join(linear)}"
        )
    widest = max(min(model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in chosen)
    if cfg.rank > widest:  # beyond full rank: no more expressive, and the matrices only grow
        raise ConfigError(f"lora.rank: {cfg.rank} exceeds the rank of every adapted layer (at most {widest})")
    for name in chosen:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(getattr(owner, child), cfg.rank, cfg.alpha_value, cfg.dropout))
    model.lora_config = cfg  # remembered for save_adapters
    return chosen


def _is_tied(model: nn.Module, name: str) -> bool:
    w = model.get_submodule(name).weight
    return any(isinstance(m, nn.Embedding) and m.weight is w for m in model.modules())


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (outputs unchanged, no extra inference cost)."""
    for m in lora_modules(model).values():
        m.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take the adapters back out of the base weights (to train them further)."""
    for m in lora_modules(model).values():
        m.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then replace every :class:`LoRALinear` by its (now updated) plain ``nn.Linear``."""
    for name, m in lora_modules(model).items():
        m.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, m.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


# ----------------------------------------------------------------------------------------------
# Adapter files: only what training changed


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices plus every other trainable parameter (e.g. a task head), by name."""
    if not lora_modules(model):
        raise ConfigError("lora: the model has no LoRA adapters (apply_lora first)")
    out = {}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in LORA_PARAM_NAMES or p.requires_grad:
            out[name] = p.detach().contiguous().cpu()
    return out


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters (and the trainable head) as one small safetensors file.

    Adapters must be unmerged: a merged base weight already holds them.
    """
    mods = lora_modules(model)
    if any(m.merged for m in mods.values()):
        raise ConfigError("lora: unmerge the adapters before saving them (merged weights already hold them)")
    cfg: LoRAConfig = model.lora_config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(path), metadata={"format": "pt", "lora": cfg.to_json()})
    return path


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Put saved adapters (and head) into ``model``; wraps the layers first if it has no LoRA yet."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt adapter file ({e})") from None
    if "lora" not in meta:
        raise CheckpointError(f"{path}: not an lmforge adapter file (no LoRA settings in its metadata)")
    cfg = LoRAConfig.from_dict(json.loads(meta["lora"]))
    if not lora_modules(model):
        apply_lora(model, cfg)
    params = dict(model.named_parameters())
    for name, t in state.items():
        if name not in params:
            raise CheckpointError(
                f"{path}: tensor {name!r} has no place in this model; "
                f"were the adapters trained on another architecture?"
            )
        if tuple(t.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(t.shape)}, the model expects "
                f"{tuple(params[name].shape)} (another rank or model size?)"
            )
    missing = [n for n in params if n.rsplit(".", 1)[-1] in LORA_PARAM_NAMES and n not in state]
    if missing:
        raise CheckpointError(f"{path}: no adapter for {missing[0]!r}; the file targets other layers")
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)
    return model
