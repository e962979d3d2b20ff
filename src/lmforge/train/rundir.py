"""The layout of a run directory, named once for every job that writes or reads one::

    runs/<name>/
        config.yaml           the resolved config (lmforge train --config runs/<name>/config.yaml)
        metrics.jsonl         one JSON object per log step (and per evaluation)
        samples.txt           text samples at each evaluation (decoders)
        checkpoints/step-N/   model directory + state.pt + manifest.json (the last K)
        best/                 the best evaluation's model directory + eval.json
        plots/loss.png        training and validation loss
        tb/                   TensorBoard events (when TensorBoard is installed)

A job adds its own files beside these (fine-tuning: ``result.json``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.modeldir import BEST
from lmforge.train.checkpoint import CHECKPOINTS, checkpoint_dir

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
EVAL_FILE = "eval.json"  # in best/: the step and metrics of the evaluation that chose it
PLOTS, LOSS_PLOT = "plots", "loss.png"
TENSORBOARD = "tb"


class RunDir:
    """The paths of a run directory at ``root`` (nothing is created until a job writes there)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / CONFIG_FILE
        self.metrics = self.root / METRICS_FILE
        self.samples = self.root / SAMPLES_FILE
        self.checkpoints = self.root / CHECKPOINTS
        self.best = self.root / BEST
        self.best_eval = self.best / EVAL_FILE
        self.plots = self.root / PLOTS
        self.loss_plot = self.plots / LOSS_PLOT
        self.tensorboard = self.root / TENSORBOARD

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def checkpoint(self, step: int) -> Path:
        """``checkpoints/step-N``."""
        return checkpoint_dir(self.root, step)

    def clear(self) -> None:
        """Remove what an earlier run wrote here (checkpoints, best/, plots, TensorBoard events,
        metrics, samples), for a fresh start; config.yaml and files of other jobs stay."""
        for directory in (self.checkpoints, self.best, self.plots, self.tensorboard):
            shutil.rmtree(directory, ignore_errors=True)
        for file in (self.metrics, self.samples):
            file.unlink(missing_ok=True)
