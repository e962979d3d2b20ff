"""Filling in masked text: fill-mask with an encoder, span filling with an encoder-decoder.

Fill-mask (:func:`fill_mask`, :func:`fill_mask_ids`): a masked LM's top-k candidates for each
``[MASK]`` (or the tokenizer's own spelling, ``<mask>`` for a BPE tokenizer), from one forward pass.

Span filling (:func:`fill_spans`) with a model trained on T5 span corruption: the source holds
sentinels ``<extra_id_0>``, ``<extra_id_1>``, ... where text is missing; the model answers
``<extra_id_0> span_0 <extra_id_1> span_1 ... </s>``, which :func:`split_spans` cuts at the
sentinels, and the spans go back into the text. :func:`span_filling_metrics` measures, on
span-corruption batches, how many dropped spans greedy decoding restores exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from lmforge.errors import LMForgeError
from lmforge.infer.decoding import generate_ids
from lmforge.infer.prompts import encode_masked, encode_source, model_arch
from lmforge.nn import eval_mode
from lmforge.tokenizer import sentinel_token, special_id

# ----------------------------------------------------------------------------------------------
# Fill-mask (encoders)


@torch.inference_mode()
def fill_mask_ids(
    model, input_ids, mask_id: int | None = None, top_k: int = 5, token_type_ids: torch.Tensor | None = None
) -> list[list[tuple[int, float]]]:
    """Top-k (token id, probability) candidates for each ``mask_id`` position of one sequence,
    left to right, from a masked LM's single forward pass."""
    if model_arch(model, "fill-mask needs") != "encoder":
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


def token_text(tokenizer, i: int) -> str:
    """How token ``i`` is written in the vocabulary (its decoded text when the tokenizer cannot say)."""
    f = getattr(tokenizer, "id_to_token", None)
    if f is not None:
        t = f(i)
        if t is not None:
            return t
    return tokenizer.decode([i])


def fill_mask(model, tokenizer, text: str, top_k: int = 5, mask_token: str | None = None) -> list[list[dict]]:
    """For each mask in ``text``, the ``top_k`` most likely tokens:
    ``[{"token": str, "id": int, "prob": float}, ...]`` per mask, left to right.

    ``mask_token`` is how the mask is written in ``text``; by default ``[MASK]`` or the tokenizer's own
    spelling (``<mask>`` for a BPE tokenizer) both work."""
    mask_id = special_id(tokenizer, "mask", model)
    if mask_id is None:
        raise LMForgeError("the tokenizer / model has no [MASK] token")
    own = token_text(tokenizer, mask_id)
    if mask_token is None:
        mask_token = own
        if "[MASK]" in text and own != "[MASK]":
            text = text.replace("[MASK]", own)
    ids = encode_masked(tokenizer, text, mask_token, model)
    cands = fill_mask_ids(model, ids, mask_id, top_k)
    return [[{"token": token_text(tokenizer, i), "id": i, "prob": p} for i, p in c] for c in cands]


# ----------------------------------------------------------------------------------------------
# Span filling (encoder-decoders)


_MASK_SPELLINGS = re.compile(r"\[MASK\]|<mask>")


@dataclass
class FilledSpans:
    text: str  # the input with every sentinel replaced by its span
    spans: list[str]  # span k fills <extra_id_k>
    source: str  # the input as the model saw it (masks written as sentinels)


def split_spans(ids: Sequence[int], sentinel_ids: Sequence[int], eos_id: int | None) -> dict[int, list[int]]:
    """``{k: ids of span k}`` from a span-corruption target; ids before the first sentinel and
    from EOS on are dropped, and a sentinel repeated keeps its first span."""
    number = {s: k for k, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for i in ids:
        if i == eos_id:
            break
        if i in number:
            current = None if number[i] in spans else spans.setdefault(number[i], [])
        elif current is not None:
            current.append(int(i))
    return spans


def _check_span_model(model, tokenizer) -> list[int]:
    if getattr(getattr(model, "config", None), "arch", None) != "encoder-decoder":
        raise LMForgeError(
            "span filling needs an encoder-decoder (T5-style span corruption); "
            "for an encoder use fill-mask, for a decoder generate"
        )
    sentinels = list(getattr(tokenizer, "sentinel_ids", []) or [])
    if not sentinels:
        raise LMForgeError(
            "the tokenizer has no sentinel tokens (<extra_id_N>); span filling needs the tokenizer "
            "the model was pretrained with"
        )
    return sentinels


def fill_spans(model, tokenizer, text: str, max_new_tokens: int = 32) -> FilledSpans:
    """Greedy span filling: each ``<extra_id_k>`` in ``text`` (or each ``[MASK]`` / ``<mask>``, numbered
    left to right) replaced by what the model predicts for it."""
    sentinels = _check_span_model(model, tokenizer)
    count = iter(range(len(sentinels)))
    source = _MASK_SPELLINGS.sub(lambda _: sentinel_token(next(count)), text)
    ids = encode_source(tokenizer, source, model)
    present = [k for k, s in enumerate(sentinels) if s in ids]
    if not present:
        raise LMForgeError(
            "no sentinel in the text; write <extra_id_0>, <extra_id_1>, ... (or [MASK]) where text is missing"
        )
    device = next(model.parameters()).device
    out = generate_ids(model, torch.tensor([ids], device=device), max_new_tokens=max_new_tokens, do_sample=False)
    spans = split_spans(out.token_lists()[0], sentinels, model.config.eos_id)
    texts = {k: tokenizer.decode(spans.get(k, [])).strip() for k in present}
    filled = re.sub(r"<extra_id_(\d+)>", lambda m: texts.get(int(m.group(1)), m.group(0)), source)
    return FilledSpans(filled, [texts[k] for k in present], source)


@torch.no_grad()
def span_filling_metrics(
    model, tokenizer, batches: Iterable[dict[str, torch.Tensor]], extra_tokens: int = 4
) -> dict[str, float]:
    """Greedy decoding on span-corruption batches (``input_ids``, ``attention_mask``, ``labels``):
    ``span_exact_match``, the share of dropped spans restored token for token, over ``spans``."""
    sentinels = _check_span_model(model, tokenizer)
    eos = model.config.eos_id
    device = next(model.parameters()).device
    right = total = 0
    for batch in batches:
        labels = batch["labels"]
        out = generate_ids(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            max_new_tokens=labels.shape[1] + extra_tokens,
            do_sample=False,
        )
        for pred, gold in zip(out.token_lists(), labels.tolist()):
            want = split_spans([t for t in gold if t != -100], sentinels, eos)
            got = split_spans(pred, sentinels, eos)
            right += sum(got.get(k) == span for k, span in want.items())
            total += len(want)
    return {"span_exact_match": right / total if total else 0.0, "spans": float(total)}
