"""What the engine decides after each evaluation, as configuration: which model is the best one
(:class:`BestCheckpoint`: a metric and a direction, written to ``best/``), and when a run ends
before ``max_steps`` (a :class:`StopCondition`, such as :class:`Patience`).

Pretraining keeps the default, the lowest validation loss; fine-tuning passes its task metric
(macro-F1 up, loss down, ...) and a patience::

    Trainer(model, cfg, batches, best_checkpoint=BestCheckpoint("macro_f1", "max"),
            stop_condition=Patience("macro_f1", evaluations=2, mode="max"))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from torch import nn

from lmforge.errors import ConfigError

Mode = Literal["min", "max"]
MODES = ("min", "max")


def improves(value: float, best: float | None, mode: Mode) -> bool:
    """Whether ``value`` is a finite value better than ``best`` (None: nothing to beat yet)."""
    if not math.isfinite(value):  # a diverged evaluation is never the best one
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode: unknown {mode!r}; choose min or max")


@dataclass(frozen=True)
class BestCheckpoint:
    """The best model is the one of the evaluation with the lowest (``mode="min"``) or highest
    (``"max"``) ``metric``; an evaluation without it changes nothing.

    The engine writes that model to ``best/`` with ``save(model, directory)`` (None: the engine's
    own model-directory writer) and ``eval.json`` (the step and its metrics) beside it; with
    ``keep_weights`` it also keeps a copy of its weights in memory (:meth:`Trainer.restore_best`)."""

    metric: str = "loss"
    mode: Mode = "min"
    save: Callable[[nn.Module, Path], Any] | None = None
    keep_weights: bool = False

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def improves(self, metrics: dict[str, float], best: dict[str, float] | None) -> bool:
        """Whether ``metrics`` beat ``best`` (the metrics of the best evaluation so far, or None)."""
        if self.metric not in metrics:
            return False
        return improves(metrics[self.metric], None if best is None else best.get(self.metric), self.mode)


LOWEST_LOSS = BestCheckpoint("loss", "min")  # pretraining's best model: the lowest validation loss


class StopCondition(Protocol):
    """Asked after each evaluation whether the run should end there; its state goes into each
    checkpoint, so that a resumed run stops where the uninterrupted one would."""

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        """The evaluation at ``step``: a one-line reason to stop after it, or None to go on."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Patience:
    """Stop after ``evaluations`` evaluations in a row in which ``metric`` did not improve on its
    best value (lower for ``mode="min"``, higher for ``"max"``); evaluations without it are skipped."""

    metric: str
    evaluations: int
    mode: Mode = "min"
    best: float | None = None
    best_step: int = 0
    bad: int = 0  # evaluations since the last improvement

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if self.evaluations < 1:
            raise ConfigError(f"patience: must be at least one evaluation, got {self.evaluations}")

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        if self.metric not in metrics:
            return None
        if improves(metrics[self.metric], self.best, self.mode):
            self.best, self.best_step, self.bad = metrics[self.metric], step, 0
            return None
        self.bad += 1
        if self.bad < self.evaluations:
            return None
        best = f"best {self.best:.4f} at step {self.best_step}" if self.best is not None else "no finite value yet"
        return f"early stop at step {step}: {self.metric} has not improved for {self.bad} evaluations ({best})"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]
