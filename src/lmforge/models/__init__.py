"""The three model families and their model-directory format.

``build_model(cfg)`` picks the family from ``cfg.arch``; ``save_model`` / ``load_model`` write and
read a model directory: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json`` when given).
"""

from __future__ import annotations

from torch import nn

from lmforge.config import ModelConfig
from lmforge.models.decoder import DecoderLM, LMOutput
from lmforge.models.encoder import EncoderLM, EncoderOutput
from lmforge.models.encoder_decoder import EncoderDecoderLM
from lmforge.models.io import load_model, save_model
from lmforge.models.quant import Int8Linear, quantize_int8
from lmforge.models.xlnet import XLNetLM, XLNetOutput

FAMILIES = {"decoder": DecoderLM, "encoder": EncoderLM, "encoder-decoder": EncoderDecoderLM, "xlnet": XLNetLM}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of the family ``cfg.arch`` (deterministic under torch.manual_seed)."""
    return FAMILIES[cfg.arch](cfg)


def count_parameters(model: nn.Module, non_embedding: bool = False) -> int:
    """Parameters counted once each (tied weights once); ``non_embedding`` leaves out token,
    position and segment embeddings, following Kaplan et al."""
    seen, total = set(), 0
    for name, p in model.named_parameters():  # named_parameters already skips tied duplicates
        if id(p) in seen:
            continue
        seen.add(id(p))
        if non_embedding and name.endswith(
            ("tok_emb.weight", "pos_emb.weight", "type_emb.weight", "shared.weight", "word_embedding.weight")
        ):
            continue
        total += p.numel()
    return total


__all__ = [
    "DecoderLM",
    "EncoderLM",
    "EncoderDecoderLM",
    "LMOutput",
    "EncoderOutput",
    "XLNetLM",
    "XLNetOutput",
    "FAMILIES",
    "Int8Linear",
    "build_model",
    "count_parameters",
    "load_model",
    "quantize_int8",
    "save_model",
]
