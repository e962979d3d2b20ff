"""What the engine consumes and counts: batch sources, the targets a batch averages over, the
keys a model's forward takes, and the language-model metrics every evaluation reports."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn


class BatchSource(Protocol):
    """Training batches: dicts of tensors whose keys are keyword arguments of the model's forward
    (``input_ids``, ``labels``, ...), this rank's slice of each global micro-batch."""

    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# eval_batches(max_batches) -> this rank's evaluation batches; max_batches None means all of them.
EvalBatches = Callable[[int | None], Iterable[dict[str, torch.Tensor]]]
# metric_fn(batch, output) -> {name: (numerator, denominator)}, summed over batches and ranks.
MetricFn = Callable[[dict[str, torch.Tensor], Any], dict[str, tuple[float, float]]]


def batch_weight(batch: dict[str, torch.Tensor]) -> int:
    """How many targets a batch's mean loss averages over: label tokens that are not -100
    (sequence labels count one per row)."""
    labels = batch.get("labels")
    if labels is None:
        return next(iter(batch.values())).shape[0]
    return int((labels != -100).sum()) if labels.ndim > 1 else labels.shape[0]


@torch.no_grad()
def lm_metrics(batch: dict[str, torch.Tensor], out: Any) -> dict[str, tuple[float, float]]:
    """Language-model metrics as (sum, count): the loss per target token, and for an encoder the
    MLM loss and accuracy over masked tokens and the next-sentence accuracy."""
    m: dict[str, tuple[float, float]] = {}
    labels = batch.get("labels")
    if labels is not None and getattr(out, "loss", None) is not None:
        n = int((labels != -100).sum())
        if n == 0:  # nothing to score (the mean over no tokens is NaN)
            return m
        m["loss"] = (float(out.loss) * n, n)
        if getattr(out, "mlm_loss", None) is not None:
            m["mlm_loss"] = (float(out.mlm_loss) * n, n)
            masked = labels != -100
            if out.logits.ndim == 2:  # the head ran on the masked positions only
                hits = out.logits.argmax(-1) == labels[masked]
            else:
                hits = (out.logits.argmax(-1) == labels) & masked
            m["mlm_accuracy"] = (int(hits.sum()), n)
    nsp = batch.get("next_sentence_label")
    if nsp is not None and getattr(out, "nsp_logits", None) is not None:
        m["nsp_accuracy"] = (int((out.nsp_logits.argmax(-1) == nsp).sum()), nsp.numel())
    return m


def forward_keys(model: nn.Module) -> set[str]:
    """Keyword arguments the model's forward accepts (batch keys beyond them go only to metric_fn)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return _AllKeys()
    return set(params)


class _AllKeys(set):
    def __contains__(self, item) -> bool:
        return True
