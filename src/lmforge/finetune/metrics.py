"""Task metrics: accuracy, macro-F1, exact match, BLEU and chrF.

Macro-F1 averages the per-class F1 = 2 TP / (2 TP + FP + FN) with every class counting the same,
so a model that predicts only the majority class scores low however imbalanced the data. A class
that never occurs and is never predicted is left out of the average (as scikit-learn does when
given the labels seen); pass ``n_classes`` to count every class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmforge.errors import LMForgeError

# Metrics where larger is better; "loss" is the only one to minimise.
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "exact_match": True, "bleu": True, "chrf": True, "loss": False}


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if len(gold) else 0.0


def f1_per_class(pred: Sequence[int], gold: Sequence[int], n_classes: int) -> np.ndarray:
    """F1 of each class 0..n_classes-1 (0 where a class has no true and no predicted example)."""
    pred, gold = np.asarray(pred, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)  # rows gold, columns predicted
    np.add.at(confusion, (gold, pred), 1)
    tp = np.diag(confusion)
    denom = confusion.sum(0) + confusion.sum(1)  # (TP + FP) + (TP + FN)
    return np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)


def macro_f1(pred: Sequence[int], gold: Sequence[int], n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``gold`` or ``pred``
    (or over all ``n_classes`` when given)."""
    pred, gold = np.asarray(pred, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    if not len(gold):
        return 0.0
    k = n_classes or int(max(pred.max(), gold.max())) + 1
    f1 = f1_per_class(pred, gold, k)
    present = np.ones(k, bool) if n_classes else np.isin(np.arange(k), np.union1d(pred, gold))
    return float(f1[present].mean())


def classification_metrics(pred: Sequence[int], gold: Sequence[int], n_classes: int) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, n_classes)}


def _normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after collapsing whitespace."""
    if len(predictions) != len(references):
        raise LMForgeError(f"exact_match: {len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    return sum(_normalise(p) == _normalise(r) for p, r in zip(predictions, references)) / len(references)


def _sacrebleu(name: str, predictions: Sequence[str], references: Sequence[str]):
    try:
        import sacrebleu
    except ImportError:
        raise LMForgeError(f"{name}: needs the sacrebleu package (pip install sacrebleu)") from None
    if len(predictions) != len(references):
        raise LMForgeError(f"{name}: {len(predictions)} predictions for {len(references)} references")
    return sacrebleu


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's standard tokenisation, one reference per prediction."""
    sacrebleu = _sacrebleu("bleu", predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100, sacrebleu's defaults: character 6-grams, beta 2), one reference each.
    Unlike BLEU it counts characters, so a restored comma or capital letter moves it."""
    sacrebleu = _sacrebleu("chrf", predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


# ----------------------------------------------------------------------------------------------
# Classification metrics through the training engine's evaluation, which sums (numerator,
# denominator) pairs over batches. Macro-F1 is not such a mean, so each batch reports its per-class
# true positives, false positives and false negatives over the batch size; the sums over the split
# are counts / N, and F1 = 2 TP / (2 TP + FP + FN) does not depend on that common N.


def classification_batch_metrics(n_classes: int):
    """A metric function for the engine: (batch, output) -> {name: (sum, count)}."""
    import torch

    @torch.no_grad()
    def metric_fn(batch, out) -> dict[str, tuple[float, float]]:
        gold, pred = batch["labels"], out.logits.argmax(-1)
        n = gold.numel()
        m = {"loss": (float(out.loss) * n, n), "accuracy": (int((pred == gold).sum()), n)}
        for c in range(n_classes):
            g, p = gold == c, pred == c
            m[f"_tp{c}"] = (int((g & p).sum()), n)
            m[f"_fp{c}"] = (int((~g & p).sum()), n)
            m[f"_fn{c}"] = (int((g & ~p).sum()), n)
        return m

    return metric_fn


def finish_classification_metrics(metrics: dict[str, float], n_classes: int) -> dict[str, float]:
    """Replace the summed per-class counts by ``macro_f1`` (over all n_classes)."""
    if "_tp0" not in metrics:
        return metrics
    f1 = []
    for c in range(n_classes):
        tp, fp, fn = (metrics.get(f"_{k}{c}", 0.0) for k in ("tp", "fp", "fn"))
        f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else 0.0)
    out = {k: v for k, v in metrics.items() if not k.startswith("_")}
    out["macro_f1"] = float(np.mean(f1))
    return out
