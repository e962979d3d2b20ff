"""Fine-tuning: the second stage of pretrain-then-fine-tune, on the same training engine.

``finetune(cfg)`` loads a backbone (an lmforge model directory, a run directory, an HF directory,
the packaged MiniLM, or a preset trained from scratch), wraps it for the task (a classifier, or
the language model itself for seq2seq / completion), adds LoRA adapters if asked, chooses which
parameters learn, and runs :class:`lmforge.train.Trainer`: the pretraining loop, with task
batches, task metrics, ``best/`` kept by a chosen metric and early stopping.

    import lmforge.finetune as ft
    result = ft.finetune(ft.FinetuneConfig.from_preset("shakespeare-genre"))
    result.metrics            # {'accuracy': ..., 'macro_f1': ..., 'loss': ...} of the best model
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import MODEL_PRESETS, ConfigBase, ModelConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.finetune.heads import ClassifierOutput, SequenceClassifier, load_task_model, save_task_model
from lmforge.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapters,
    merge,
    merge_and_unload,
    save_adapters,
    unmerge,
)
from lmforge.finetune.metrics import (
    HIGHER_IS_BETTER,
    accuracy,
    bleu,
    chrf,
    classification_batch_metrics,
    exact_match,
    finish_classification_metrics,
    macro_f1,
)
from lmforge.finetune.params import Trainable, count_trainable, parse_mode, select_parameters
from lmforge.finetune.tasks import (
    TASKS,
    ShuffledBatches,
    TaskDataset,
    check_rows,
    collate,
    encode_rows,
    eval_batches,
    genre_rows,
    load_task,
    restoration_prompt,
    restoration_rows,
)
from lmforge.nn import eval_mode
from lmforge.tokenizer import special_id
from lmforge.train.config import TrainConfig
from lmforge.train.engine import Trainer, lm_metrics, seed_everything
from lmforge.train.hooks import BestCheckpoint, Patience
from lmforge.train.run import _clear_run, fit_model_to_tokenizer

ADAPTER_FILE = "adapters.safetensors"
GENRE_SOURCE = "shakespeare-genre"  # as --train: the bundled plays labelled by genre
RESTORE_SOURCE = "shakespeare-restore"  # as --train: put back the case and punctuation of speech lines
GENERATION_METRICS = ("exact_match", "bleu", "chrf")


# The usual fine-tuning recipe (BERT, Devlin et al.): AdamW with beta2 0.999 and light weight decay,
# linear warmup then linear decay to zero, evaluation on the whole validation split.
FINETUNE_TRAIN_DEFAULTS: dict[str, Any] = dict(
    max_steps=500,
    batch_size=16,
    lr=1e-4,
    warmup_steps=50,
    eval_every=50,
    weight_decay=0.01,
    beta2=0.999,
    schedule="linear",
    min_lr_ratio=0.0,
    checkpoint_every=0,
    eval_batches=0,
    sample_tokens=0,
    log_every=10,
)


@dataclass
class FinetuneConfig(ConfigBase):
    """A fine-tuning run: the task and its files, the backbone, what learns, and the recipe."""

    name: str = "finetune"
    out_dir: str | None = None  # default runs/<name>
    task: str = "classify"  # classify | seq2seq | completion
    train_file: str = ""  # CSV / JSONL, "shakespeare-genre" or "shakespeare-restore"
    val_file: str = ""  # required for files; the bundled tasks have their own validation plays
    model: str = "minilm"  # model / run / HF directory, "minilm", or a model preset (from scratch)
    tokenizer: str | None = None  # tokenizer.json; default: the model directory's
    init: str = "pretrained"  # pretrained | scratch (same architecture, random weights)
    params: str = "all"  # all | no-embeddings | top-k:N | bitfit | lora
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    max_len: int = 128  # tokens per example (capped by the model's max_positions)
    metric: str | None = None  # picks best/: default macro_f1 (classify) or loss
    patience: int = 0  # stop after this many evaluations without improvement; 0: never
    passage_chars: int = 512  # bundled tasks: passage length in characters (whole lines)
    max_per_class: int = 0  # genre task: cap on training passages per genre (0: all)
    val_per_play: int = 0  # bundled tasks: validation passages per held-out play, evenly spread (0: all)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE_TRAIN_DEFAULTS))

    @property
    def run_dir(self) -> str:
        return self.out_dir or f"runs/{self.name}"

    @property
    def best_metric(self) -> str:
        return self.metric or ("macro_f1" if self.task == "classify" else "loss")

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: unknown {self.task!r}; choose one of {', '.join(TASKS)}")
        parse_mode(self.params)  # refuses an unknown selection before anything loads
        if self.init not in ("pretrained", "scratch"):
            raise ConfigError(f"init: unknown {self.init!r}; choose pretrained or scratch")
        allowed = ("loss", "accuracy", "macro_f1") if self.task == "classify" else ("loss",) + GENERATION_METRICS
        if self.best_metric not in allowed:
            raise ConfigError(
                f"metric: {self.best_metric!r} is not a {self.task} metric; choose one of {', '.join(allowed)}"
            )
        if self.train_file == GENRE_SOURCE and self.task != "classify":
            raise ConfigError(f"train_file: {GENRE_SOURCE} is a classify task; set task=classify")
        if self.train_file == RESTORE_SOURCE and self.task == "classify":
            raise ConfigError(
                f"train_file: {RESTORE_SOURCE} is a seq2seq or completion task; set task=seq2seq "
                "(encoder-decoder) or task=completion (decoder)"
            )
        for name in ("max_len", "passage_chars"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("patience", "max_per_class", "val_per_play"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FinetuneConfig:
        if name not in FINETUNE_PRESETS:
            raise ConfigError(
                f"preset: unknown fine-tuning preset {name!r}; choose one of {', '.join(FINETUNE_PRESETS)}"
            )
        d = copy.deepcopy(FINETUNE_PRESETS[name])
        d.update(overrides)
        return cls.from_dict(d)


FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    # Which kind of play is a passage from? The packaged MiniLM, all parameters, ~9 CPU-minutes.
    # Passages of ~320 characters (~90 MiniLM tokens), 200 per genre; 40 per held-out play.
    "shakespeare-genre": dict(
        name="shakespeare-genre",
        task="classify",
        train_file=GENRE_SOURCE,
        model="minilm",
        params="all",
        max_len=128,
        patience=2,
        passage_chars=320,
        max_per_class=200,
        val_per_play=40,
        train=dict(FINETUNE_TRAIN_DEFAULTS, max_steps=80, batch_size=16, lr=1e-4, warmup_steps=8, eval_every=20),
    ),
    # Put back case and punctuation: the span-corruption T5 of `lmforge train --preset shakespeare-t5`
    # fine-tuned on ~120-character passages of speeches; chrF and exact match on 32 per held-out play.
    "shakespeare-restore": dict(
        name="shakespeare-restore",
        task="seq2seq",
        train_file=RESTORE_SOURCE,
        model="runs/shakespeare-t5",
        max_len=64,
        passage_chars=120,
        val_per_play=32,
        metric="chrf",
        train=dict(FINETUNE_TRAIN_DEFAULTS, max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=200),
    ),
    # The same task as prompt -> completion for the quick-start decoder (runs/shakespeare-gpt).
    "shakespeare-restore-gpt": dict(
        name="shakespeare-restore-gpt",
        task="completion",
        train_file=RESTORE_SOURCE,
        model="runs/shakespeare-gpt",
        max_len=128,
        passage_chars=120,
        val_per_play=32,
        metric="chrf",
        train=dict(FINETUNE_TRAIN_DEFAULTS, max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=200),
    ),
}


# ----------------------------------------------------------------------------------------------
# Backbones and tokenizers


def load_backbone(
    spec: str, tokenizer: str | None = None, init: str = "pretrained", seed: int = 0
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for a ``--model`` value: ``minilm`` (the packaged all-MiniLM-L6-v2), a run
    directory (its ``best/``), an lmforge or HF model directory, or a model preset (random weights,
    needs ``tokenizer``). ``init="scratch"`` keeps the architecture and re-draws the weights."""
    from lmforge.interop.hf import packaged_model_dir
    from lmforge.modeldir import find_model_dir, load
    from lmforge.models import build_model
    from lmforge.tokenizer import Tokenizer

    if spec in MODEL_PRESETS:
        if tokenizer is None:
            raise ConfigError(f"model: the preset {spec!r} starts from random weights and needs --tokenizer PATH")
        tok = Tokenizer.load(tokenizer)
        torch.manual_seed(seed)
        return build_model(fit_model_to_tokenizer(ModelConfig.from_preset(spec), tok)), tok
    path = packaged_model_dir() if spec == "minilm" else Path(spec)
    if find_model_dir(path) is None:
        raise CheckpointError(
            f"{spec}: not a model directory, run directory, 'minilm' or model preset ({', '.join(MODEL_PRESETS)})"
        )
    model, tok = load(path, tokenizer=tokenizer, hint="pass --tokenizer PATH")
    if init == "scratch":
        torch.manual_seed(seed)
        model = build_model(model.config)
    return model, tok


# ----------------------------------------------------------------------------------------------
# Task data and task models


def load_task_data(
    cfg: FinetuneConfig, tokenizer, arch: str, max_len: int, start_id: int | None = None
) -> tuple[TaskDataset, TaskDataset]:
    """(train, validation) datasets for ``cfg``; every row is checked before anything trains.
    ``start_id``: the token before a completion prompt (the model's start token)."""
    if cfg.train_file == GENRE_SOURCE:
        train_rows, val_rows = genre_rows(cfg.passage_chars, cfg.max_per_class, cfg.val_per_play, seed=cfg.train.seed)
        train = encode_rows(train_rows, "classify", tokenizer, arch, max_len)
        return train, encode_rows(val_rows, "classify", tokenizer, arch, max_len, train.label_names)
    if cfg.train_file == RESTORE_SOURCE:
        splits = restoration_rows(cfg.passage_chars, cfg.val_per_play)
        if cfg.task == "completion":
            splits = tuple(
                [{"prompt": restoration_prompt(r["source"]), "completion": r["target"]} for r in rows]
                for rows in splits
            )
        return tuple(encode_rows(rows, cfg.task, tokenizer, arch, max_len, start_id=start_id) for rows in splits)
    if not cfg.train_file or not cfg.val_file:
        raise ConfigError(f"train_file / val_file: give both task files (--train F --val F), or --train {GENRE_SOURCE}")
    train = load_task(cfg.train_file, cfg.task, tokenizer, arch, max_len, start_id=start_id)
    if cfg.task == "classify" and len(train.label_names) < 2:
        raise ConfigError(
            f"{cfg.train_file}: only one label ({train.label_names[0]!r}); a classifier needs two or more"
        )
    return train, load_task(cfg.val_file, cfg.task, tokenizer, arch, max_len, train.label_names, start_id)


def build_task_model(task: str, backbone: nn.Module, label_names: list[str] | None = None) -> nn.Module:
    """A classifier over the backbone, or the language model itself for seq2seq / completion."""
    return SequenceClassifier(backbone, label_names) if task == "classify" else backbone


# ----------------------------------------------------------------------------------------------
# Evaluation outside the training loop


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


# ----------------------------------------------------------------------------------------------
# The engine, configured for a task


def task_trainer(
    cfg: FinetuneConfig,
    model: nn.Module,
    tokenizer,
    train_data: TaskDataset,
    val_data: TaskDataset,
    max_len: int,
    run_dir: Path | None,
    log: Callable[[str], None] = print,
) -> Trainer:
    """:class:`lmforge.train.Trainer` (its loop, unchanged) configured for a task: task batches,
    task metrics (macro-F1, generation metrics), the best model by ``cfg.best_metric`` kept in
    memory and (with ``run_dir``) written to ``best/`` as a task model directory, and early stopping
    after ``cfg.patience`` evaluations without improvement."""
    pad = special_id(tokenizer, "pad") or 0
    extra = {"task": {"type": cfg.task, "max_len": max_len, "params": cfg.params, "metric": cfg.best_metric}}

    def save_best(m: nn.Module, directory: Path) -> None:
        save_task_model(m, directory, tokenizer, extra)
        if cfg.params == "lora":
            save_adapters(m, directory / ADAPTER_FILE)

    mode = "max" if HIGHER_IS_BETTER[cfg.best_metric] else "min"
    n_classes = len(train_data.label_names or [])
    if cfg.task == "classify":
        metric_fn = classification_batch_metrics(n_classes)

        def finish(m: nn.Module, metrics: dict[str, float]) -> dict[str, float]:
            metrics = finish_classification_metrics(metrics, n_classes)
            metrics.pop("ppl", None)  # exp(classification loss) means nothing
            return metrics
    else:
        metric_fn = lm_metrics

        def finish(m: nn.Module, metrics: dict[str, float]) -> dict[str, float]:
            if cfg.best_metric in GENERATION_METRICS and metrics:
                metrics.update(generation_metrics(m, tokenizer, val_data))
            return metrics

    return Trainer(
        model,
        cfg.train,
        ShuffledBatches(train_data, cfg.train.batch_size, pad, cfg.train.seed),
        eval_batches=eval_batches(val_data, max(cfg.train.batch_size, 32), pad),
        metric_fn=metric_fn,
        finish_metrics=finish,
        best_checkpoint=BestCheckpoint(cfg.best_metric, mode, save=save_best, keep_weights=True),
        stop_condition=Patience(cfg.best_metric, cfg.patience, mode) if cfg.patience else None,
        run_dir=run_dir,
        tokenizer=tokenizer,
        log=log,
    )


@dataclass
class FinetuneResult:
    metrics: dict[str, float]  # validation metrics of the best model
    best_step: int
    steps: int  # optimizer steps run (fewer than max_steps after an early stop)
    trainable: Trainable
    model: nn.Module  # with the best weights (adapters unmerged)
    tokenizer: Any
    train_size: int
    val_size: int
    label_names: list[str] | None = None
    baseline: dict[str, float] | None = None  # classify: the majority-class baseline
    run_dir: Path | None = None
    seconds: float = 0.0


def finetune(
    cfg: FinetuneConfig,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    save: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune as ``cfg`` says (``model`` / ``tokenizer`` replace ``cfg.model`` when given).

    With ``save`` the run directory gets the engine's metrics.jsonl and plots, ``best/`` (a model
    directory loadable with :func:`load_task_model`; LoRA merged in, adapters beside it in
    ``best/adapters.safetensors``) and ``result.json``; an earlier run there is refused unless
    ``overwrite``.
    """
    t0 = time.perf_counter()
    seed = cfg.train.seed
    run_dir = Path(cfg.run_dir) if save else None
    if run_dir is not None and ((run_dir / "result.json").exists() or (run_dir / "metrics.jsonl").exists()):
        if not overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; start afresh with --overwrite, or pick another --name / --out"
            )
    if model is None:
        model, tokenizer = load_backbone(cfg.model, cfg.tokenizer, cfg.init, seed)
    elif tokenizer is None:
        raise ConfigError("finetune: pass the tokenizer with the model")
    arch = model.config.arch
    max_len = min(cfg.max_len, model.config.max_positions)
    from lmforge.infer.prompts import text_start_id

    start = text_start_id(tokenizer, model) if arch == "decoder" else None
    train_data, val_data = load_task_data(cfg, tokenizer, arch, max_len, start)
    log(
        f"task {cfg.task}: {len(train_data):,} training and {len(val_data):,} validation examples"
        + (f", labels {', '.join(train_data.label_names)}" if train_data.label_names else "")
    )

    seed_everything(seed)  # the head and adapters start from the run's seed
    task_model = build_task_model(cfg.task, model, train_data.label_names)
    if cfg.params == "lora":
        apply_lora(task_model, cfg.lora)
    trainable = select_parameters(task_model, cfg.params)
    log(str(trainable))

    if run_dir is not None and overwrite:  # checked data and model first: a failed start clears nothing
        _clear_run(run_dir)
        (run_dir / "result.json").unlink(missing_ok=True)

    trainer = task_trainer(cfg, task_model, tokenizer, train_data, val_data, max_len, run_dir, log)
    fit = trainer.fit()
    if run_dir is not None and not fit.stopped_by:  # fine-tuning keeps best/; the engine's resume state is dead weight
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    trainer.restore_best()
    metrics = dict(trainer.best or trainer.evaluate(None))
    metrics.pop("step", None)
    if cfg.task != "classify" and cfg.best_metric not in GENERATION_METRICS and val_data.sources:
        metrics.update(generation_metrics(trainer.model, tokenizer, val_data))
    result = FinetuneResult(
        metrics=metrics,
        best_step=trainer.best_step,
        steps=fit.step,
        trainable=trainable,
        model=trainer.model,
        tokenizer=tokenizer,
        train_size=len(train_data),
        val_size=len(val_data),
        label_names=train_data.label_names,
        baseline=majority_baseline(train_data, val_data) if cfg.task == "classify" else None,
        run_dir=run_dir,
        seconds=time.perf_counter() - t0,
    )
    if save:
        summary = {
            "config": cfg.to_dict(),
            "metrics": metrics,
            "best_step": result.best_step,
            "steps": result.steps,
            "trainable": trainable.trainable,
            "total": trainable.total,
            "baseline": result.baseline,
            "seconds": result.seconds,
        }
        (run_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "FINETUNE_PRESETS",
    "task_trainer",
    "finetune",
    "load_backbone",
    "load_task_data",
    "build_task_model",
    "predict_classes",
    "majority_baseline",
    "generation_metrics",
    "SequenceClassifier",
    "ClassifierOutput",
    "save_task_model",
    "load_task_model",
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "merge",
    "unmerge",
    "merge_and_unload",
    "save_adapters",
    "load_adapters",
    "Trainable",
    "select_parameters",
    "count_trainable",
    "TaskDataset",
    "check_rows",
    "load_task",
    "encode_rows",
    "collate",
    "genre_rows",
    "restoration_rows",
]
