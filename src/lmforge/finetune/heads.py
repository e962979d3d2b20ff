"""Task models built on the pretrained language models.

- Sequence classification: :class:`SequenceClassifier` puts a linear layer over one vector per
  sequence (``pooling``): an encoder's pooled [CLS] (through its pooler when it has one, else the
  [CLS] hidden state), a decoder's hidden state at the last real token (the only position that has
  read the whole text under causal attention), or the mean of the real tokens' states (``mean``:
  what a masked LM pretrained without NSP has trained; an encoder-decoder classifies this way with
  its encoder).
- Seq2seq and prompt -> completion reuse :class:`~lmforge.models.EncoderDecoderLM` and
  :class:`~lmforge.models.DecoderLM` as they are: the task is in the labels (see ``tasks``).

A fine-tuned model directory is an ordinary model directory (``lmforge.load_model`` reads its
backbone) whose config carries ``"lmforge": {"task": ...}``; a classifier adds its head in
``head.safetensors``. :func:`load_task_model` rebuilds the whole task model. Adapters are merged
on save, so a saved directory never needs LoRA code.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.finetune.config import POOLINGS
from lmforge.finetune.lora import lora_modules, merge_and_unload
from lmforge.modeldir import load_model
from lmforge.models import save_model
from lmforge.models.io import atomic_directory, read_config

HEAD_FILE = "head.safetensors"


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, n_labels)
    loss: torch.Tensor | None = None
    features: torch.Tensor | None = None  # (B, C) the vector the head reads


class SequenceClassifier(nn.Module):
    """One label per sequence (or sequence pair) from an encoder or decoder backbone.

    ``labels`` are the class names, in id order. An encoder's MLM and next-sentence heads are
    dropped (the task never uses them); a decoder's untied LM head is kept so the backbone still
    saves as a plain language model, and stays frozen.
    """

    def __init__(self, backbone: nn.Module, labels: list[str], dropout: float | None = None, pooling: str = "auto"):
        super().__init__()
        cfg = backbone.config
        if cfg.arch == "xlnet":
            raise ConfigError(
                "classify: fine-tuning lmforge's XLNet is not supported yet; wrap an encoder, a decoder or "
                "an encoder-decoder"
            )
        if len(labels) < 2:
            raise ConfigError(f"classify: need at least two labels, got {labels}")
        if cfg.arch == "encoder":
            backbone.mlm = backbone.nsp = None
            backbone.config = cfg = cfg.replace(mlm_head=False, nsp_head=False, pooler=cfg.has_pooler)
        self.pooling = resolve_pooling(pooling, cfg.arch, has_pooler=getattr(backbone, "pooler", None) is not None)
        self.backbone, self.config, self.labels = backbone, cfg, list(labels)
        self.dropout = nn.Dropout(cfg.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(cfg.d_model, len(labels))
        nn.init.normal_(self.classifier.weight, std=cfg.init_std)
        nn.init.zeros_(self.classifier.bias)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def unused_parameters(self) -> set[str]:
        """Backbone parameters the task never reads (a decoder's untied LM head): never trained."""
        if self.config.arch == "decoder" and not self.config.tie_embeddings:
            return {n for n, _ in self.named_parameters() if n.startswith("backbone.lm_head.")}
        if self.config.arch == "encoder-decoder":  # the encoder classifies; the decoder stays as it was
            unused = ("backbone.decoder.", "backbone.lm_head.")
            return {n for n, _ in self.named_parameters() if n.startswith(unused)}
        return set()

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, C), one vector per sequence."""
        arch = self.config.arch
        if arch == "encoder":
            h = self.backbone.encoder(input_ids, attention_mask, token_type_ids=token_type_ids).last_hidden_state
        elif arch == "encoder-decoder":
            h = self.backbone.encode(input_ids, attention_mask).last_hidden_state
        else:
            h = self.backbone.transformer(input_ids, attention_mask).last_hidden_state  # (B, T, C)
        if self.pooling == "pooler":
            return self.backbone.pooler(h)
        if self.pooling == "cls":
            return h[:, 0]
        if attention_mask is None:
            attention_mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
        if self.pooling == "mean":
            weights = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
            return (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        positions = torch.arange(h.shape[1], device=h.device)
        last = (attention_mask.long() * positions).argmax(dim=1)  # the last real token, any padding side
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        x = self.features(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(x))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ClassifierOutput(logits, loss, x)


def resolve_pooling(pooling: str, arch: str, has_pooler: bool = False) -> str:
    """The vector a classifier reads: ``auto`` is the pooler (or [CLS]) for an encoder, the last real
    token for a decoder, the mean for an encoder-decoder's encoder. [CLS] is an encoder's only, and
    the last token a decoder's only (elsewhere it has not read the text before it)."""
    if pooling not in POOLINGS and pooling != "pooler":
        raise ConfigError(f"pooling: unknown {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if pooling == "auto":
        return {"encoder": "pooler" if has_pooler else "cls", "decoder": "last"}.get(arch, "mean")
    if pooling in ("cls", "pooler") and arch != "encoder":
        raise ConfigError(f"pooling: {pooling} needs an encoder; a {arch} classifies by 'mean' or 'auto'")
    if pooling == "cls" and has_pooler:
        return "pooler"
    if pooling == "last" and arch != "decoder":
        raise ConfigError(f"pooling: last needs a decoder; an {arch} classifies by 'mean' or 'auto'")
    return pooling


# ----------------------------------------------------------------------------------------------
# Saving and loading task models


def _plain(model: nn.Module) -> nn.Module:
    """The model with LoRA adapters merged in (a merged copy; the model itself is not touched)."""
    if not lora_modules(model):
        return model
    return merge_and_unload(copy.deepcopy(model))


def save_task_model(model: nn.Module, directory: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write a fine-tuned model directory (adapters merged; a classifier's head in ``head.safetensors``)."""
    model = _plain(model)
    extra = dict(extra or {})
    if not isinstance(model, SequenceClassifier):
        return save_model(model, directory, tokenizer, extra)
    extra["task"] = {**extra.get("task", {}), "type": "classify", "labels": model.labels, "pooling": model.pooling}

    def write(tmp: Path) -> None:
        inner = save_model(model.backbone, tmp / "backbone", tokenizer, extra)
        for f in inner.iterdir():
            os.replace(f, tmp / f.name)
        inner.rmdir()
        head = {f"classifier.{k}": v.detach().contiguous().cpu() for k, v in model.classifier.state_dict().items()}
        save_file(head, str(tmp / HEAD_FILE), metadata={"format": "pt"})

    return atomic_directory(Path(directory), write)


def load_task_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A saved task model and its ``extra`` section: a :class:`SequenceClassifier` when the directory
    holds a classification head, else the language model itself."""
    directory = Path(directory)
    _, extra = read_config(directory)
    backbone = load_model(directory)
    task = extra.get("task", {})
    if task.get("type") != "classify":
        return backbone.to(device), extra
    head = directory / HEAD_FILE
    if not head.is_file():
        raise CheckpointError(f"{directory}: a classification model without {HEAD_FILE}; the directory is incomplete")
    model = SequenceClassifier(backbone, task["labels"], pooling=task.get("pooling", "auto"))
    state = load_file(str(head))
    expected = {f"classifier.{k}": tuple(v.shape) for k, v in model.classifier.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        raise CheckpointError(
            f"{head}: head tensors do not match {len(task['labels'])} labels over d_model={model.config.d_model}"
        )
    with torch.no_grad():
        for k, v in state.items():
            model.get_parameter(k).copy_(v)
    return model.to(device).eval(), extra
