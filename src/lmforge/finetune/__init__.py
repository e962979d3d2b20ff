"""Fine-tuning: the second stage of pretrain-then-fine-tune, on the same training engine.

``finetune(cfg)`` loads a backbone (an lmforge model directory, a run directory, an HF directory,
the packaged MiniLM, or a preset trained from scratch), wraps it for the task (a classifier, or
the language model itself for seq2seq / completion), adds LoRA adapters if asked, chooses which
parameters learn, and runs :class:`lmforge.train.Trainer`: the pretraining loop, with task
batches, task metrics, ``best/`` kept by a chosen metric and early stopping.

    import lmforge.finetune as ft
    result = ft.finetune(ft.FinetuneConfig.from_preset("shakespeare-genre"))
    result.metrics            # {'accuracy': ..., 'macro_f1': ..., 'loss': ...} of the best model

Rooms: ``config`` (FinetuneConfig, presets), ``run`` (the job: backbones, task data, the
engine configured for a task, ``finetune()``), ``evaluate`` (evaluation outside the loop),
``heads``, ``lora``, ``params`` (what learns), ``tasks`` (task data), ``metrics``.
"""

from lmforge.finetune.config import (
    FINETUNE_PRESETS,
    FINETUNE_TRAIN_DEFAULTS,
    GENERATION_METRICS,
    GENRE_SOURCE,
    RESTORE_SOURCE,
    FinetuneConfig,
)
from lmforge.finetune.evaluate import generation_metrics, majority_baseline, predict_classes
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
from lmforge.finetune.params import Trainable, count_trainable, select_parameters
from lmforge.finetune.run import (
    ADAPTER_FILE,
    FinetuneResult,
    build_task_model,
    finetune,
    load_backbone,
    load_task_data,
    task_trainer,
)
from lmforge.finetune.tasks import (
    TaskDataset,
    check_rows,
    collate,
    encode_rows,
    genre_rows,
    load_task,
    restoration_rows,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "FINETUNE_PRESETS",
    "FINETUNE_TRAIN_DEFAULTS",
    "GENRE_SOURCE",
    "RESTORE_SOURCE",
    "GENERATION_METRICS",
    "ADAPTER_FILE",
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
