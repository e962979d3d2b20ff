"""Model directories as the library reads them: the weights and the tokenizer beside them.

One loader for every command that takes a model directory (inference, fine-tuning, ``info``,
``plan``, ``convert``). A directory is one of

- an lmforge model directory: ``config.json`` (a :class:`~lmforge.config.ModelConfig`, plus an
  ``"lmforge"`` section in a fine-tuned one) + ``model.safetensors`` (+ ``tokenizer.json``);
- a run directory (of ``lmforge train`` or ``lmforge finetune``): its ``best/`` is read;
- an HF model directory (its ``config.json`` has a ``model_type``): converted on the fly.

:func:`load_model` is :func:`lmforge.models.load_model` (config + weights, checked tensor by
tensor) plus the check that a ``tokenizer.json`` in the directory fits the model's embedding. It
sits above both the model files and the tokenizer so that neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.hf import config_from_hf, from_hf
from lmforge.models import io
from lmforge.tokenizer import Tokenizer, check_compatible

BEST = "best"  # the model directory inside a run directory


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    with_extra: bool = False,
):
    """The model of an lmforge model directory; a ``tokenizer.json`` beside it must fit its embedding."""
    loaded = io.load_model(directory, device=device, dtype=dtype, with_extra=with_extra)
    model = loaded[0] if with_extra else loaded
    check_tokenizer(directory, model.config.vocab_size)
    return loaded


def check_tokenizer(directory: str | Path, vocab_size: int) -> Tokenizer | None:
    """The directory's tokenizer (None when it has none), refused when it does not fit ``vocab_size`` rows."""
    path = Path(directory) / io.TOKENIZER_FILE
    if not path.is_file():
        return None
    tokenizer = Tokenizer.load(path)
    check_compatible(tokenizer, vocab_size, str(path))
    return tokenizer


def find_model_dir(path: str | Path) -> Path | None:
    """The model directory ``path`` names: a run directory's ``best/``, else ``path`` itself when it
    holds a ``config.json``; None when it is neither."""
    path = Path(path)
    if (path / BEST / io.CONFIG_FILE).is_file():
        return path / BEST
    if (path / io.CONFIG_FILE).is_file():
        return path
    return None


def model_dir(path: str | Path) -> Path:
    """:func:`find_model_dir`, refusing a path that names no model directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    found = find_model_dir(path)
    if found is None:
        raise CheckpointError(
            f"{path}: no {io.CONFIG_FILE}; not an lmforge model directory, run directory or HF model directory"
        )
    return found


def hf_config(directory: str | Path) -> dict | None:
    """The HF config of an HF model directory (its ``config.json`` has a ``model_type``); None for others."""
    path = Path(directory) / io.CONFIG_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and "model_type" in d else None


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config of a model, run or HF model directory, without reading the weights
    (a fine-tuned directory's ``"lmforge"`` section is not part of it)."""
    directory = model_dir(path)
    hf = hf_config(directory)
    if hf is None:
        return io.read_config(directory)[0]
    weights = directory / io.WEIGHTS_FILE
    keys: set[str] | None = None
    if weights.is_file():
        try:
            with safe_open(str(weights), "pt") as f:  # the tensor names only, for heads and ties
                keys = set(f.keys())
        except Exception as e:  # a corrupt or truncated safetensors header
            raise CheckpointError(f"{weights}: unreadable HF checkpoint ({e})") from None
    return config_from_hf(hf, keys)[0]


def model_config(source: str | Path) -> ModelConfig:
    """The model config of a config file (``.json`` / ``.yaml``) or of a model, run or HF model directory."""
    path = Path(source)
    if path.is_dir():
        return read_model_config(path)
    if not path.exists():
        raise ConfigError(f"config: {source} not found")
    return ModelConfig.from_file(path)


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    need_tokenizer: bool = True,
    hint: str = "save the model with its tokenizer, or copy the tokenizer.json in",
) -> tuple[nn.Module, Tokenizer | None]:
    """(model, tokenizer) of a model, run or HF model directory, in eval mode.

    ``tokenizer``: a tokenizer file or directory to use instead of the one beside the model (the
    one beside an lmforge model is still checked against its embedding). Without either, the
    tokenizer is None, or refused with ``hint`` when ``need_tokenizer``.
    """
    directory = model_dir(path)
    tok_file = directory / io.TOKENIZER_FILE
    if tokenizer is None and need_tokenizer and not tok_file.is_file():
        raise CheckpointError(
            f"{directory}: no {io.TOKENIZER_FILE} beside the model (lmforge reads the fast-tokenizer format); {hint}"
        )
    if hf_config(directory) is not None:
        model = from_hf(directory).to(device)
        own = Tokenizer.load(tok_file) if tok_file.is_file() else None
    else:
        model = io.load_model(directory, device=device)
        own = check_tokenizer(directory, model.config.vocab_size)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, (Tokenizer.load(tokenizer) if tokenizer is not None else own)
