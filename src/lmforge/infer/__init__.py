"""Inference: scoring (log P, perplexity, bits per byte, PLL, log P(y | x)), generation (greedy,
sampling, beam search, KV cache, streaming), fill-mask, and attention maps."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import CheckpointError
from lmforge.infer.attention import AttentionMap, attention_map, plot_attention, save_attention
from lmforge.infer.generate import Completion, GenerateOutput, fill_mask, fill_mask_ids, generate, generate_ids
from lmforge.infer.score import (
    ScoreResult,
    conditional_logprobs,
    decoder_token_logprobs,
    plan_windows,
    pseudo_log_likelihood,
    score,
    score_ids,
    summarize,
)


def load_for_inference(path: str | Path, device: str = "auto", dtype: str | None = None):
    """(model, tokenizer) from an lmforge model directory, or an HF model directory (its
    ``config.json`` has a ``model_type``; converted on the fly), on ``device``, in eval mode."""
    import torch

    from lmforge.device import DTYPES, resolve_device
    from lmforge.modeldir import load_model
    from lmforge.tokenizer import Tokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    dev = resolve_device(device)
    cfg_file = path / "config.json"
    is_hf = False
    if cfg_file.is_file():
        try:
            is_hf = "model_type" in json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            is_hf = False
    if is_hf:
        from lmforge.interop.hf import from_hf

        model = from_hf(path).to(dev)
    else:
        model = load_model(path, device=dev)
    if dtype not in (None, "auto", "fp32", "float32"):
        if dtype not in DTYPES:
            raise CheckpointError(f"dtype: unknown dtype {dtype!r}; choose fp32, bf16 or fp16")
        model = model.to(DTYPES[dtype])
    elif dtype == "auto" and dev.type == "cuda":
        model = model.to(torch.bfloat16)
    model.eval()
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{path}: no tokenizer.json beside the model; the CLI needs it to turn text into tokens "
            f"(save the model with its tokenizer, or copy the tokenizer.json in)"
        )
    return model, Tokenizer.load(path / "tokenizer.json")


__all__ = [
    "AttentionMap",
    "Completion",
    "GenerateOutput",
    "ScoreResult",
    "attention_map",
    "conditional_logprobs",
    "decoder_token_logprobs",
    "fill_mask",
    "fill_mask_ids",
    "generate",
    "generate_ids",
    "load_for_inference",
    "plan_windows",
    "plot_attention",
    "pseudo_log_likelihood",
    "save_attention",
    "score",
    "score_ids",
    "summarize",
]
