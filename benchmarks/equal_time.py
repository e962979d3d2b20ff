"""Train a run config for a wall time rather than a step count (paradigms.py, recipe.py).

A short calibration run times the config's step on this machine (the median of its 10-step
intervals after the first ten steps, so that start-up, the first slow steps and a hiccup of the
machine do not count); the config then trains for ``seconds / step time``
steps, its schedule stretched or shortened to those steps, with a few evaluations on the way.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from lmforge.train.config import RunConfig

CALIBRATION_STEPS = (10, 60)  # the seconds per step of a config: timed over the log steps between these
QUIET = dict(progress=False, tensorboard=False, sample_tokens=0, log_every=10)


@dataclass
class TimedRun:
    steps: int
    seconds_per_step: float
    result: object  # lmforge's FitResult: metrics, tokens, train_seconds


def seconds_per_step(base: RunConfig, out_dir: Path, threads: int) -> float:
    """The config's seconds per optimizer step on this machine, from a calibration run in ``out_dir``."""
    from lmforge.jobs import pretrain

    first, last = CALIBRATION_STEPS
    cal = base.replace(
        out_dir=str(out_dir),
        train=dict(base.train.to_dict(), **QUIET, threads=threads, max_steps=last, eval_every=0, checkpoint_every=last),
    )
    pretrain(cal, overwrite=True, log=lambda s: None)
    records = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    at = sorted({r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r and r["step"] >= first}.items())
    # one slow interval (another process, a page fault storm) would otherwise shorten the whole run
    return statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(at, at[1:]))


def train_for_seconds(
    base: RunConfig, out_dir: Path, seconds: float, threads: int, evals: int = 4, per_step: float | None = None
) -> TimedRun:
    """Train ``base`` into ``out_dir`` for about ``seconds`` of training (warmup capped at a tenth of
    the steps); ``per_step`` skips the calibration when the step time is already known."""
    from lmforge.jobs import pretrain

    if per_step is None:
        per_step = seconds_per_step(base, out_dir.with_name(f"calibrate-{out_dir.name}"), threads)
    steps = max(int(seconds / per_step), 50)
    cfg = base.replace(
        out_dir=str(out_dir),
        train=dict(
            base.train.to_dict(),
            **QUIET,
            threads=threads,
            max_steps=steps,
            warmup_steps=min(base.train.warmup_steps, steps // 10),
            eval_every=max(steps // evals, 1),
            checkpoint_every=steps,
        ),
    )
    return TimedRun(steps, per_step, pretrain(cfg, overwrite=True, log=lambda s: None))
