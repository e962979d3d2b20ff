"""Training: one engine (:class:`Trainer`) for pretraining and fine-tuning, run configs, presets,
and the pretraining job (:func:`pretrain`) behind ``lmforge train``."""

from lmforge.train.batches import lm_metrics
from lmforge.train.config import RUN_PRESETS, DataConfig, RunConfig, TrainConfig
from lmforge.train.engine import FitResult, Trainer
from lmforge.train.hooks import BestCheckpoint, Patience, StopCondition
from lmforge.train.optim import lr_at, param_groups
from lmforge.train.run import pretrain
from lmforge.train.rundir import RunDir

__all__ = [
    "Trainer",
    "FitResult",
    "BestCheckpoint",
    "Patience",
    "StopCondition",
    "RunDir",
    "TrainConfig",
    "DataConfig",
    "RunConfig",
    "RUN_PRESETS",
    "pretrain",
    "lm_metrics",
    "lr_at",
    "param_groups",
]
