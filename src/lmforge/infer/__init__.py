"""Inference: scoring (log P, perplexity, bits per byte, PLL, log P(y | x)), generation (greedy,
sampling, beam search, KV cache, streaming), fill-mask, and attention maps."""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import CheckpointError, ConfigError
from lmforge.infer.attention import AttentionMap, attention_map, plot_attention, save_attention
from lmforge.infer.decoding import generate_ids
from lmforge.infer.fill import fill_mask, fill_mask_ids
from lmforge.infer.generate import generate
from lmforge.infer.results import Completion, GenerateOutput, ScoreResult, summarize
from lmforge.infer.score import (
    conditional_logprobs,
    decoder_token_logprobs,
    order_score,
    plan_windows,
    pseudo_log_likelihood,
    score,
    score_ids,
)


def load_for_inference(path: str | Path, device: str = "auto", dtype: str | None = None, int8_head: bool = True):
    """(model, tokenizer) from an lmforge model or run directory, or an HF model directory
    (converted on the fly; :func:`lmforge.modeldir.load`), on ``device``, in eval mode.

    ``dtype``: None / fp32 (as stored), bf16, fp16, auto (bf16 on a GPU, else fp32), or int8:
    int8 weights on the CPU (:func:`lmforge.models.quant.quantize_int8`; the output head too
    unless not ``int8_head``; a ``device`` of auto is then the CPU, another device is refused)."""
    import torch

    from lmforge.device import DTYPES, resolve_device
    from lmforge.modeldir import load

    int8 = dtype == "int8"
    if int8:
        if device != "auto" and resolve_device(device).type != "cpu":
            raise ConfigError(
                f"--dtype int8: int8 runs on the CPU only, not {device}; use --device cpu (or bf16 on a GPU)"
            )
        device = "cpu"
    dev = resolve_device(device)
    if dtype == "auto":  # bf16 on a GPU, else as stored (fp32)
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else None
    elif dtype in (None, "fp32", "float32") or int8:
        torch_dtype = None
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise CheckpointError(f"dtype: unknown dtype {dtype!r}; choose fp32, bf16, fp16 or int8")
    model, tokenizer = load(
        path,
        device=dev,
        dtype=torch_dtype,
        hint="the CLI needs it to turn text into tokens (save the model "
        "with its tokenizer, or copy the tokenizer.json in)",
    )
    if int8:
        from lmforge.models.quant import quantize_int8

        model = quantize_int8(model.float(), include_head=int8_head)
    return model, tokenizer


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
    "order_score",
    "summarize",
]
