"""Evaluation of a fine-tuned model outside the training loop: predicted classes, the
majority-class baseline, and the generation metrics (exact match, BLEU, chrF) of greedy outputs."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.finetune.heads import SequenceClassifier
from lmforge.finetune.metrics import accuracy, bleu, chrf, exact_match, macro_f1
from lmforge.finetune.tasks import TaskDataset, collate
from lmforge.nn import eval_mode


@torch.no_grad()
def predict_classes(model: SequenceClassifier, data: TaskDataset, batch_size: int = 64, pad_id: int = 0) -> list[int]:
    """Predicted class ids of every example, in order."""
    model.eval()
    device = next(model.parameters()).device
    pred: list[int] = []
    for s in range(0, len(data), batch_size):
        batch = collate(data.examples[s : s + batch_size], pad_id)
        batch.pop("labels")
        pred += model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).tolist()
    return pred


def majority_baseline(train: TaskDataset, val: TaskDataset) -> dict[str, float]:
    """Metrics of always answering the most frequent training class."""
    counts = torch.bincount(torch.tensor(train.class_ids), minlength=len(train.label_names))
    pred = [int(counts.argmax())] * len(val)
    return {
        "accuracy": accuracy(pred, val.class_ids),
        "macro_f1": macro_f1(pred, val.class_ids, len(train.label_names)),
    }


def generation_metrics(model: nn.Module, tokenizer, data: TaskDataset, limit: int = 200) -> dict[str, float]:
    """Exact match, BLEU and chrF of greedy outputs against the references (first ``limit`` examples)."""
    from lmforge.infer.generate import generate

    n = min(limit, len(data.sources)) if limit else len(data.sources)
    sources, refs = data.sources[:n], data.references[:n]
    # as long as the longest reference and a little more, within the context
    new = max(len(tokenizer.encode(r)) for r in refs) + 4
    if model.config.arch == "decoder":
        new = min(new, model.config.max_positions - max(len(tokenizer.encode(s)) + 1 for s in sources))
    new = min(new, model.config.max_positions)
    if new <= 0:
        return {}
    with eval_mode(model):
        outs = generate(model, tokenizer, sources, max_new_tokens=new, temperature=0.0, batch_size=32)
    texts = [o.text.strip() for o in outs]
    refs = [r.strip() for r in refs]
    return {"exact_match": exact_match(texts, refs), "bleu": bleu(texts, refs), "chrf": chrf(texts, refs)}
