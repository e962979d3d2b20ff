"""What each pretraining objective has learned, measured at evaluation beside the loss.

The loss alone hides a plateau: an encoder that always answers the most frequent token and copies
its input elsewhere scores about 15% "MLM accuracy" over all labelled positions (the 10% kept
tokens are free), and a T5 that emits sentinels and EOS right scores well on target tokens it
never had to guess. So the metrics here count only what the objective hides from the model:

- masked LM (``mlm``, ``mlm+nsp``): ``mask_accuracy``, top-1 accuracy at the positions replaced
  by ``[MASK]`` (not the 10% kept or randomised ones), and ``mask_baseline``, the accuracy of
  always answering the most frequent training token at the same positions;
- span corruption (``span``): ``span_token_accuracy``, teacher-forced top-1 accuracy on the tokens
  of the dropped spans (sentinels and EOS left out), and ``span_exact_tf``, the share of spans
  whose every token is right under teacher forcing. Greedy decoding, where errors propagate, is
  measured after training by :func:`lmforge.infer.span_filling_metrics`.

Each factory returns the engine's ``metric_fn(batch, out) -> {name: (sum, count)}``, which also
reports everything :func:`~lmforge.train.batches.lm_metrics` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmforge.nn import eval_mode
from lmforge.train.batches import MetricFn, lm_metrics


def most_frequent_token(tokens: np.ndarray, vocab_size: int, exclude: Sequence[int] = ()) -> int:
    """The most frequent id of a token stream, special ids (``exclude``) left out."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size)
    counts[list(exclude)] = -1
    return int(counts.argmax())


def masked_lm_metrics(mask_id: int, frequent_id: int) -> MetricFn:
    """:func:`lm_metrics` plus ``mask_accuracy`` and ``mask_baseline`` (see the module docstring)."""

    @torch.no_grad()
    def metric_fn(batch: dict[str, torch.Tensor], out: Any) -> dict[str, tuple[float, float]]:
        m = lm_metrics(batch, out)
        labels = batch.get("labels")
        if labels is None or out.logits is None:
            return m
        labelled = labels != -100
        at_mask = (batch["input_ids"] == mask_id) & labelled  # (B, T)
        n = int(at_mask.sum())
        if n == 0:
            return m
        if out.logits.ndim == 2:  # the head ran on the labelled positions only, in order
            pred = out.logits.argmax(-1)[at_mask[labelled]]
        else:
            pred = out.logits.argmax(-1)[at_mask]
        gold = labels[at_mask]
        m["mask_accuracy"] = (int((pred == gold).sum()), n)
        m["mask_baseline"] = (int((gold == frequent_id).sum()), n)
        return m

    return metric_fn


def span_targets(labels: torch.Tensor, sentinel_ids: Sequence[int], eos_id: int | None) -> torch.Tensor:
    """Span index of every target position, -1 at sentinels, EOS and ignored positions.

    Span-corruption labels read ``<extra_id_0> a b <extra_id_1> c ... </s>``: each sentinel opens
    the next span. (B, L) -> (B, L) of span numbers, counted per row from 0.
    """
    sentinel = torch.isin(labels, torch.tensor(list(sentinel_ids), dtype=labels.dtype, device=labels.device))
    span = sentinel.long().cumsum(-1) - 1  # (B, L)
    inside = ~sentinel & (labels != -100) & (span >= 0)
    if eos_id is not None:
        inside &= labels != eos_id
    return torch.where(inside, span, torch.full_like(span, -1))


def span_metrics(sentinel_ids: Sequence[int], eos_id: int | None) -> MetricFn:
    """:func:`lm_metrics` plus ``span_token_accuracy`` and ``span_exact_tf`` (see the module docstring)."""

    @torch.no_grad()
    def metric_fn(batch: dict[str, torch.Tensor], out: Any) -> dict[str, tuple[float, float]]:
        m = lm_metrics(batch, out)
        labels = batch.get("labels")
        if labels is None or getattr(out, "logits", None) is None:
            return m
        span = span_targets(labels, sentinel_ids, eos_id)  # (B, L)
        inside = span >= 0
        n = int(inside.sum())
        if n == 0:
            return m
        right = out.logits.argmax(-1) == labels  # (B, L)
        m["span_token_accuracy"] = (int(right[inside].sum()), n)
        # a span is right when none of its tokens is wrong: count wrong tokens per (row, span)
        n_spans = int(span.max()) + 1
        key = (torch.arange(len(span), device=span.device)[:, None] * n_spans + span)[inside]
        wrong = torch.zeros(len(span) * n_spans, dtype=torch.long, device=span.device)
        wrong.index_add_(0, key, (~right[inside]).long())
        present = torch.zeros_like(wrong).index_add_(0, key, torch.ones_like(key)) > 0
        m["span_exact_tf"] = (int((wrong[present] == 0).sum()), int(present.sum()))
        return m

    return metric_fn


def objective_metrics(objective: str, tokenizer: Any, train_tokens: np.ndarray) -> MetricFn:
    """The evaluation metrics of a pretraining ``objective`` (``train_tokens``: for the baseline)."""
    if objective in ("mlm", "mlm+nsp"):
        frequent = most_frequent_token(train_tokens, tokenizer.vocab_size, tokenizer.special_ids)
        return masked_lm_metrics(tokenizer.mask_id, frequent)
    if objective == "span":
        return span_metrics(tokenizer.sentinel_ids, tokenizer.eos_id)
    return lm_metrics


@torch.no_grad()
def left_to_right_metrics(
    model: Any, tokens: np.ndarray, seq_len: int, tokens_per_byte: float, batch_size: int = 32
) -> dict[str, float]:
    """An XLNet's causal score of a held-out token stream, comparable to a decoder's: windows of
    ``seq_len`` tokens overlapping by one, each token after a window's first predicted from the ones
    before it (:func:`lmforge.models.xlnet.order_logprobs` along the natural order), every token but
    the stream's first (and a tail shorter than a window) scored once. ``l2r_loss`` in nats per
    token, ``l2r_bpb`` in bits per byte."""
    from lmforge.models.xlnet import order_logprobs

    stream = np.asarray(tokens, dtype=np.int64)
    starts = range(0, len(stream) - seq_len + 1, seq_len - 1)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(starts), batch_size):
            rows = np.stack([stream[s : s + seq_len] for s in starts[i : i + batch_size]])
            lp = order_logprobs(model, torch.from_numpy(rows).to(device))
            total, count = total - float(lp.double().sum()), count + lp.numel()
    loss = total / max(count, 1)
    return {"l2r_loss": loss, "l2r_bpb": loss * tokens_per_byte / float(np.log(2)), "l2r_tokens": float(count)}


@torch.no_grad()
def hidden_token_metrics(
    model: Any,
    tokens: np.ndarray,
    seq_len: int,
    frequent_id: int,
    rate: float = 0.15,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, float]:
    """An XLNet on the masked LM's test: in each non-overlapping held-out window, ``rate`` of the
    positions (BERT's 15%) are hidden from every position and predicted from all the others, as an
    encoder predicts its [MASK] positions. ``hidden_accuracy``: top-1 accuracy there;
    ``hidden_baseline``: always answering ``frequent_id`` (the most frequent training token)."""
    stream = np.asarray(tokens, dtype=np.int64)
    n_rows = len(stream) // seq_len
    rows_all = stream[: n_rows * seq_len].reshape(n_rows, seq_len)
    P = max(1, round(rate * seq_len))
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    right = baseline = total = 0
    with eval_mode(model):
        for i in range(0, n_rows, batch_size):
            ids = torch.from_numpy(rows_all[i : i + batch_size]).to(device)  # (B, T)
            B = ids.shape[0]
            hidden = torch.from_numpy(np.stack([np.sort(rng.choice(seq_len, P, replace=False)) for _ in range(B)]))
            hidden = hidden.to(device)  # (B, P)
            target_mapping = torch.nn.functional.one_hot(hidden, seq_len).float()  # (B, P, T)
            perm_mask = target_mapping.amax(1, keepdim=True).expand(B, seq_len, seq_len)  # nobody sees a hidden one
            gold = ids.gather(1, hidden)
            pred = model(ids, perm_mask=perm_mask, target_mapping=target_mapping).logits.argmax(-1)
            right += int((pred == gold).sum())
            baseline += int((gold == frequent_id).sum())
            total += gold.numel()
    return {"hidden_accuracy": right / total, "hidden_baseline": baseline / total}
