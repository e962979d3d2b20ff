"""The fine-tuning job: ``finetune(cfg)`` loads a backbone, wraps it for the task, adds LoRA
adapters if asked, chooses which parameters learn, and runs :class:`lmforge.train.Trainer`
configured for the task (:func:`task_trainer`): task batches, task metrics, ``best/`` kept by a
chosen metric and early stopping."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import MODEL_PRESETS, ModelConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.finetune.config import GENERATION_METRICS, GENRE_SOURCE, RESTORE_SOURCE, FinetuneConfig
from lmforge.finetune.evaluate import generation_metrics, majority_baseline
from lmforge.finetune.heads import SequenceClassifier, save_task_model
from lmforge.finetune.lora import apply_lora, save_adapters
from lmforge.finetune.metrics import HIGHER_IS_BETTER, classification_batch_metrics, finish_classification_metrics
from lmforge.finetune.params import Trainable, select_parameters
from lmforge.finetune.tasks import (
    ShuffledBatches,
    TaskDataset,
    encode_rows,
    eval_batches,
    genre_rows,
    load_task,
    restoration_prompt,
    restoration_rows,
)
from lmforge.tokenizer import special_id
from lmforge.train.batches import lm_metrics
from lmforge.train.engine import Trainer, seed_everything
from lmforge.train.hooks import BestCheckpoint, Patience
from lmforge.train.run import fit_model_to_tokenizer
from lmforge.train.rundir import RunDir

ADAPTER_FILE = "adapters.safetensors"
RESULT_FILE = "result.json"  # beside the engine's files in the run directory: the run's summary


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


def build_task_model(
    task: str, backbone: nn.Module, label_names: list[str] | None = None, pooling: str = "auto"
) -> nn.Module:
    """A classifier over the backbone, or the language model itself for seq2seq / completion."""
    return SequenceClassifier(backbone, label_names, pooling=pooling) if task == "classify" else backbone


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
    layout = RunDir(run_dir) if run_dir is not None else None
    if layout is not None and ((run_dir / RESULT_FILE).exists() or layout.metrics.exists()):
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
    task_model = build_task_model(cfg.task, model, train_data.label_names, cfg.pooling)
    if cfg.params == "lora":
        apply_lora(task_model, cfg.lora)
    trainable = select_parameters(task_model, cfg.params)
    log(str(trainable))

    if layout is not None and overwrite:  # checked data and model first: a failed start clears nothing
        layout.clear()
        (run_dir / RESULT_FILE).unlink(missing_ok=True)

    trainer = task_trainer(cfg, task_model, tokenizer, train_data, val_data, max_len, run_dir, log)
    fit = trainer.fit()
    if layout is not None and not fit.stopped_by:  # fine-tuning keeps best/; the engine's resume state is dead weight
        shutil.rmtree(layout.checkpoints, ignore_errors=True)
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
        (run_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result
