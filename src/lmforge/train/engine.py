"""The training engine: one loop for pretraining and fine-tuning.

A :class:`Trainer` takes a plain model, a source of training batches and a :class:`TrainConfig`.
Everything else is pluggable with a default: the evaluation batches and the metric function,
which parameters train, how the model is saved, how a text sample is drawn, which evaluation's
model is the best one and when a run stops early (:mod:`lmforge.train.hooks`). A fine-tuning task
passes its own and reuses this loop as is. What a run prints and records is
:mod:`lmforge.train.reporting`; where it writes, :mod:`lmforge.train.rundir`; what a batch
counts, :mod:`lmforge.train.batches`; how a signal ends a run, :mod:`lmforge.train.signals`.
What stays here (about 540 lines) is the loop, its step and evaluation, and the checkpoint
state: :meth:`Trainer.state_dict` and :meth:`Trainer.resume` must name the same fields, so they
live beside the fields they save.

One optimizer step::

    for each of grad_accum micro-batches (this rank's slice of the global batch):
        loss_i = model(**batch).loss                       # mean over the micro-batch's targets
        backward(loss_i * w_i / W)                         # w_i targets in it, W in the whole global batch
    clip the global gradient norm; skip the update if the loss or the norm is not finite
    AdamW step at lr(step): linear warmup, then cosine / linear / warmup-stable-decay
    (train.optimizer=muon: Muon steps the blocks' matrices at the same schedule, AdamW the rest)

Weighting each micro-batch by its share of the targets makes the update the gradient of the mean
loss over the whole global batch, however it is cut into micro-batches and ranks.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge import device as dev
from lmforge.errors import CheckpointError, LMForgeError, TrainingError
from lmforge.models.io import WEIGHTS_FILE, save_model
from lmforge.nn import eval_mode
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as D
from lmforge.train import optim
from lmforge.train.batches import BatchSource, EvalBatches, MetricFn, batch_weight, forward_keys, lm_metrics
from lmforge.train.config import TrainConfig
from lmforge.train.hooks import LOWEST_LOSS, BestCheckpoint, StopCondition
from lmforge.train.optim import lr_at
from lmforge.train.reporting import Reporter, count_tokens
from lmforge.train.rundir import RunDir
from lmforge.train.signals import StopSignals

# Test hook: the process sends itself SIGTERM after this many optimizer steps.
STOP_AFTER_STEPS_ENV = "LMFORGE_STOP_AFTER_STEPS"


# finish_metrics(model, metrics) -> the metrics reported: derived from the summed ones (macro-F1 from
# confusion counts), or measured on the model (generated text against references).
FinishMetrics = Callable[[nn.Module, dict[str, float]], dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    tokens: int  # over all ranks
    skipped: bool


@dataclass
class FitResult:
    step: int
    stopped_by: str | None  # "SIGINT" / "SIGTERM" when a signal ended the run early
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    checkpoint: Path | None = None
    best: dict[str, float] | None = None  # the metrics of the best evaluation (see BestCheckpoint)
    best_step: int = 0
    early_stop: str | None = None  # the stop condition's reason when it ended the run
    nonfinite_steps: int = 0
    train_seconds: float = 0.0
    tokens: int = 0

    @property
    def best_val_loss(self) -> float | None:
        """The validation loss of the best evaluation."""
        return None if self.best is None else self.best.get("loss")


# ----------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Train ``model`` on ``train_batches`` as ``cfg`` says; see the module docstring for the step.

    Plug-ins (all optional):
      ``eval_batches(max_batches)``  this rank's validation batches (None: the whole split)
      ``metric_fn(batch, output)``   {name: (sum, count)} accumulated over evaluation; default
                                     :func:`lm_metrics`
      ``finish_metrics(model, m)``   the evaluation's metrics from the summed ones (default: as they are)
      ``best_checkpoint``            which evaluation's model ``best/`` holds, and how it is written
                                     (:class:`~lmforge.train.hooks.BestCheckpoint`; default: lowest loss)
      ``stop_condition``             ends the run before ``max_steps`` after an evaluation
                                     (e.g. :class:`~lmforge.train.hooks.Patience`; default: none)
      ``trainable(name, param)``     which parameters train (the rest are frozen); default all
      ``save_fn(model, directory)``  writes a model directory (default :func:`save_model` with the
                                     tokenizer); its ``model.safetensors`` must hold the full state
      ``sample_fn(model)``           a text sample shown at each evaluation (default: none;
                                     :func:`lmforge.train.run.sample_fn` builds the pretraining one)
      ``tokens_per_byte``            of the validation text, to report bits per byte (causal LM)
    ``run_dir`` (None: nothing is written) receives metrics.jsonl, checkpoints/, best/, plots/
    (:mod:`lmforge.train.rundir`).
    ``runtime``: the job's device, dtype and process group, when the job has set them up already
    (:func:`~lmforge.train.distributed.setup_runtime`; None: the Trainer sets them up from ``cfg``).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_batches: BatchSource,
        *,
        eval_batches: EvalBatches | None = None,
        metric_fn: MetricFn = lm_metrics,
        finish_metrics: FinishMetrics | None = None,
        best_checkpoint: BestCheckpoint = LOWEST_LOSS,
        stop_condition: StopCondition | None = None,
        trainable: Callable[[str, nn.Parameter], bool] | None = None,
        run_dir: str | Path | None = None,
        tokenizer: Any = None,
        save_fn: Callable[[nn.Module, Path], None] | None = None,
        sample_fn: Callable[[nn.Module], str] | None = None,
        tokens_per_byte: float | None = None,
        find_unused_parameters: bool = False,
        log: Callable[[str], None] | None = None,
        runtime: D.Runtime | None = None,
    ):
        self.cfg = cfg
        self.train_batches, self.eval_batches, self.metric_fn = train_batches, eval_batches, metric_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.layout = RunDir(run_dir) if run_dir is not None else None
        self.tokenizer, self.save_fn, self.tokens_per_byte = tokenizer, save_fn, tokens_per_byte
        self.sample_fn, self.finish_metrics = sample_fn, finish_metrics
        self.best_policy, self.stop_condition = best_checkpoint, stop_condition
        runtime = runtime or D.setup_runtime(cfg)  # a job that set itself up passes its own
        self.device, self.dtype, self.dist = runtime.device, runtime.dtype, runtime.dist
        if trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(bool(trainable(name, p)))
        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError("no trainable parameters: the trainable selection froze every parameter")

        self.model = model.to(self.device)  # the plain module: evaluation, sampling, saving
        self.train_model = D.wrap_model(
            model,
            self.dist,
            self.device,
            cfg.strategy,
            cfg.compile,
            cfg.activation_checkpointing,
            find_unused_parameters,
        )
        self.sharded = D.is_sharded(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # AdamW (None if Muon takes everything) and Muon (train.optimizer=muon, else None)
        self.optimizer, self.muon = optim.make_optimizers(self.model, cfg, self.device, self.sharded)
        self.optimizers = [o for o in (self.optimizer, self.muon) if o is not None]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self._forward_keys = forward_keys(self.model)
        # the model runs a decoder over targets (not a classifier over an encoder-decoder's encoder)
        self.encoder_decoder = (
            getattr(getattr(self.model, "config", None), "arch", None) == "encoder-decoder"
            and "decoder_input_ids" in self._forward_keys
        )
        self.report = Reporter(cfg, self.dist, self.device, self.dtype, self.layout, log or print, self.encoder_decoder)

        # counters that a checkpoint carries over
        self.step = 0
        self.tokens_seen = 0
        self.best: dict[str, float] | None = None  # the metrics of the best evaluation so far
        self.best_step = 0
        self.best_weights: dict[str, torch.Tensor] | None = None  # best_checkpoint.keep_weights
        self.early_stop: str | None = None  # why stop_condition ended the run
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.train_seconds = 0.0
        self.last_checkpoint: Path | None = None

        self.signals = StopSignals(self.log)
        self._stop_after = int(os.environ.get(STOP_AFTER_STEPS_ENV, "0") or 0)
        seed_everything(cfg.seed + self.dist.rank)

    # ---- logging helpers ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def log(self, msg: str) -> None:
        self.report.log(msg)

    # ---- one optimizer step ------------------------------------------------------------------
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        kwargs = {k: v for k, v in batch.items() if k in self._forward_keys}
        with dev.autocast(self.device, self.dtype):
            return model(**kwargs)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]] | None = None) -> StepResult:
        """One optimizer step over ``grad_accum`` micro-batches (drawn from the source if not given)."""
        cfg = self.cfg
        if micro_batches is None:
            micro_batches = [self.train_batches.next_batch() for _ in range(cfg.grad_accum)]
        weights = [batch_weight(b) for b in micro_batches]
        counts = D.all_reduce_sum(
            torch.tensor(
                [float(sum(weights)), float(sum(count_tokens(b, self.encoder_decoder) for b in micro_batches))],
                device=self.device,
            )
        )
        total_weight, tokens = counts[0].item(), int(counts[1].item())
        lr = lr_at(self.step, cfg)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["lr"] = cfg.muon_lr * lr / cfg.lr

        self.train_model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for i, (batch, w) in enumerate(zip(micro_batches, weights)):
            batch = self._to_device(batch)
            with D.gradient_sync(self.train_model, enabled=i == len(micro_batches) - 1):
                loss = self._forward(self.train_model, batch).loss
                # gradient of the global mean; DDP averages over ranks, hence the world_size factor
                scale = w * self.dist.world_size / max(total_weight, 1.0)
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.detach().float() * w
        loss_mean = (D.all_reduce_sum(loss_sum) / max(total_weight, 1.0)).item()

        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        # fp16's grad scaler skips inf gradients itself (and lowers the scale); count only real failures
        finite = math.isfinite(loss_mean) and (math.isfinite(norm) or self.scaler.is_enabled())
        if finite:
            for opt in self.optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return StepResult(loss_mean, norm, lr, tokens, skipped=not finite)

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train from the current step to ``max_steps`` (or until SIGINT / SIGTERM); evaluate,
        checkpoint and log on the way. Raises :class:`TrainingError` when training cannot go on."""
        cfg, report = self.cfg, self.report
        metrics: dict[str, float] = {}
        if self.early_stop is not None or self.step >= cfg.max_steps:
            self.log(
                f"nothing to do: the run stopped early at step {self.step} ({self.early_stop})"
                if self.early_stop is not None
                else f"nothing to do: the run is at step {self.step} of max_steps={cfg.max_steps}; "
                "raise train.max_steps to train further"
            )
            metrics = report.last_eval(self.step)  # a finished run resumed: its final evaluation, as logged
        restore = self.signals.install()
        report.start(self.step, self.train_seconds)
        try:
            while self.step < cfg.max_steps and self.early_stop is None:
                micro = [self.train_batches.next_batch() for _ in range(cfg.grad_accum)]
                if not report.planned:
                    report.print_plan(self.model, self.params, micro, self.step)
                t0 = time.perf_counter()
                try:
                    result = self.train_step(micro)
                except torch.cuda.OutOfMemoryError:
                    raise TrainingError(self._oom_message(micro)) from None
                dev.synchronize(self.device)
                elapsed = time.perf_counter() - t0
                self.step += 1
                self._account(result, elapsed)
                report.on_step(self.step, result, elapsed, self.train_seconds)
                if self._stop_after and self.step == self._stop_after:
                    os.kill(os.getpid(), signal.SIGTERM)  # test hook: as if the job were preempted here

                record = None
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    record = report.step_record(self.step, self.tokens_seen, self.nonfinite_total, self.train_seconds)
                last = self.step == cfg.max_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    metrics = self._evaluate_and_report(full=last)
                    record = {**(record or {"step": self.step}), **{f"val_{k}": v for k, v in metrics.items()}}
                if record is not None:
                    report.write(record)
                stop = self.signals.agreed(self.device, self.dist.enabled)
                periodic = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                if stop or last or (periodic and not self.nonfinite_in_row):  # no checkpoint mid-failure
                    self.save_checkpoint()
                if stop:
                    self.log(
                        f"stopped by {self.signals.received or 'a signal on another rank'} after step {self.step}; "
                        f"checkpoint {self.last_checkpoint}; continue with: lmforge train --resume {self.run_dir}"
                    )
                    break
                # an early stop (set by the evaluation above) ends the loop here
        finally:
            restore()
            report.close()
        report.plot()
        return FitResult(
            self.step,
            self.signals.received,
            metrics,
            self.last_checkpoint,
            best=self.best,
            best_step=self.best_step,
            early_stop=self.early_stop,
            nonfinite_steps=self.nonfinite_total,
            train_seconds=self.train_seconds,
            tokens=self.tokens_seen,
        )

    def _account(self, result: StepResult, elapsed: float) -> None:
        """Count the step; stop the run after too many non-finite steps in a row."""
        self.tokens_seen += result.tokens
        self.train_seconds += elapsed
        if result.skipped:
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            self.log(
                f"warning: step {self.step}: non-finite loss or gradient (loss {result.loss}, grad norm "
                f"{result.grad_norm}); update skipped ({self.nonfinite_in_row} in a row)"
            )
            if self.nonfinite_in_row >= self.cfg.max_nonfinite:
                where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
                raise TrainingError(
                    f"{self.nonfinite_in_row} non-finite steps in a row (step {self.step}){where}; lower train.lr, "
                    f"raise train.warmup_steps, or set train.grad_clip (now {self.cfg.grad_clip})"
                )
        else:
            self.nonfinite_in_row = 0

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Metrics over ``max_batches`` validation batches per rank (None: all), summed over ranks;
        plus ``ppl`` = exp(LM loss) and ``bpb`` = loss x tokens/byte / ln 2 when tokens_per_byte is known."""
        if self.eval_batches is None:
            return {}
        sums: dict[str, list[float]] = {}
        with eval_mode(self.model):
            for batch in self.eval_batches(max_batches):
                batch = self._to_device(batch)
                out = self._forward(self.model, batch)
                for k, (num, den) in self.metric_fn(batch, out).items():
                    acc = sums.setdefault(k, [0.0, 0.0])
                    acc[0] += float(num)
                    acc[1] += float(den)
        keys = sorted(set().union(*map(set, D.all_gather_objects(sorted(sums)))))
        totals = D.all_reduce_sum(
            torch.tensor([sums.get(k, [0.0, 0.0])[i] for k in keys for i in (0, 1)], dtype=torch.float64)
        )
        metrics = {k: (totals[2 * j] / totals[2 * j + 1]).item() for j, k in enumerate(keys) if totals[2 * j + 1] > 0}
        lm_loss = metrics.get("mlm_loss", metrics.get("loss"))
        if lm_loss is not None:
            metrics["ppl"] = math.exp(min(lm_loss, 700.0))
            if self.tokens_per_byte:
                metrics["bpb"] = lm_loss * self.tokens_per_byte / math.log(2)
        return metrics if self.finish_metrics is None else self.finish_metrics(self.model, metrics)

    def _evaluate_and_report(self, full: bool) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.evaluate(None if full else (self.cfg.eval_batches or None))
        if not metrics:
            return metrics
        seconds = time.perf_counter() - t0  # the evaluation's own time, without the best/ save
        # the verdicts on this evaluation are logged before its line (as fine-tuning always has)
        if self.best_policy.improves(metrics, self.best):
            self.best, self.best_step = dict(metrics), self.step
            self._save_best(metrics)
        if self.stop_condition is not None:
            reason = self.stop_condition.update(self.step, metrics)
            if reason is not None and self.step < self.cfg.max_steps:  # (the last step ends the run anyway)
                self.early_stop = reason
                self.log(reason)
        self.report.on_eval(self.step, metrics, full, seconds)
        if self.sample_fn is not None and (self.is_main or self.sharded):
            try:
                text = self.sample_fn(self.model)
            except LMForgeError as e:  # a sample is for the eye: never let it end a training run
                self.log(f"warning: no sample at step {self.step}: {e}")
            else:
                self.report.on_sample(self.step, text)
        return metrics

    # ---- checkpoints -------------------------------------------------------------------------
    def _saveable_model(self) -> nn.Module | None:
        """A module whose state_dict is the whole model (gathered on rank 0 under FSDP; None elsewhere)."""
        if not self.sharded:
            return self.model
        full = D.full_model_state(self.model)  # a collective: every rank takes part
        if not self.is_main:
            return None
        from lmforge.models import build_model
        from lmforge.models.io import load_state_into

        clone = build_model(self.model.config)
        load_state_into(clone, full, "gathered FSDP state")
        return clone

    def _write_model(self, model: nn.Module, directory: Path) -> None:
        if self.save_fn is not None:
            self.save_fn(model, directory)
        else:
            save_model(model, directory, tokenizer=self.tokenizer)

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.best_policy.keep_weights:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.run_dir is None:
            return
        model = self._saveable_model()  # every rank takes part (FSDP gathers); rank 0 writes
        if not self.is_main:
            return
        (self.best_policy.save or self._write_model)(model, self.layout.best)
        self.layout.best_eval.write_text(json.dumps({"step": self.step, **metrics}, indent=2) + "\n")

    def restore_best(self) -> None:
        """Load the best evaluation's weights back into the model (kept with ``best_checkpoint.keep_weights``)."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that a resumed run needs (collective under FSDP)."""
        return {
            "format": 1,
            "step": self.step,
            "optimizer": None if self.optimizer is None else D.full_optimizer_state(self.model, self.optimizer),
            **({"muon": self.muon.state_dict()} if self.muon is not None else {}),
            "scaler": self.scaler.state_dict(),
            "rng": D.all_gather_objects(ckpt.rng_state()),  # one per rank
            "sampler": ckpt.to_safe(self.train_batches.state_dict()),
            "trainer": {
                "tokens_seen": self.tokens_seen,
                "best": self.best,
                "best_step": self.best_step,
                "stop_condition": None if self.stop_condition is None else self.stop_condition.state_dict(),
                "early_stop": self.early_stop,
                "nonfinite_in_row": self.nonfinite_in_row,
                "nonfinite_total": self.nonfinite_total,
                "train_seconds": self.train_seconds,
                "window": dict(self.report.window),
                "world_size": self.dist.world_size,
            },
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` (rank 0) and keep the newest ``keep_checkpoints``."""
        if self.run_dir is None:
            return None
        model = self._saveable_model()
        state = self.state_dict()
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(self.layout.checkpoint(self.step), lambda d: self._write_model(model, d), state)
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        self.last_checkpoint = D.broadcast_object(path)
        D.barrier()
        return self.last_checkpoint

    def resume(self, checkpoint: str | Path) -> int:
        """Restore weights, optimizer, RNG, sampler and counters from a checkpoint directory; returns
        its step. metrics.jsonl is cut back to that step, so the log reads as one run."""
        path = Path(checkpoint)
        ckpt.verify_checkpoint(path)
        state = ckpt.load_state(path)
        from safetensors.torch import load_file

        try:
            weights = load_file(str(path / WEIGHTS_FILE))
        except Exception as e:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: unreadable weights ({e})") from None
        saved = "muon" if "muon" in state else "adamw"
        if saved != ("muon" if self.muon is not None else "adamw"):
            raise CheckpointError(
                f"{path}: trained with train.optimizer={saved}, this run has train.optimizer={self.cfg.optimizer}; "
                f"resume with train.optimizer={saved}"
            )
        D.load_full_state(self.model, self.optimizer, weights, state["optimizer"])
        if self.muon is not None:
            self.muon.load_state_dict(state["muon"])
        self.scaler.load_state_dict(state["scaler"])
        self.train_batches.load_state_dict(ckpt.from_safe(state["sampler"]))
        t = state["trainer"]
        if t.get("world_size", 1) != self.dist.world_size:
            self.log(
                f"note: resuming a {t.get('world_size')}-process run with {self.dist.world_size} processes; "
                "the data order continues, RNG streams are re-derived"
            )
        self.step = int(state["step"])
        self.tokens_seen = t["tokens_seen"]
        if "best" in t:
            self.best, self.best_step, self.early_stop = t["best"], t["best_step"], t["early_stop"]
        elif t.get("best_val_loss") is not None:  # a checkpoint of an earlier version: best by loss
            self.best = {"loss": t["best_val_loss"]}
        if self.stop_condition is not None and t.get("stop_condition") is not None:
            self.stop_condition.load_state_dict(t["stop_condition"])
        self.nonfinite_in_row, self.nonfinite_total = t["nonfinite_in_row"], t["nonfinite_total"]
        self.train_seconds, self.report.window = t["train_seconds"], dict(t["window"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * self.step)
        self.last_checkpoint = path
        self.report.resume(self.step)
        self.log(f"resumed from {path} at step {self.step}")
        return self.step

    # ---- errors ---------------------------------------------------------------------------------
    def _oom_message(self, micro: list[dict[str, torch.Tensor]]) -> str:
        b = micro[0]["input_ids"]
        return (
            f"CUDA out of memory at step {self.step + 1} with micro-batches of {b.shape[0]} x {b.shape[1]} "
            f"tokens per rank; raise train.grad_accum (same global batch, smaller micro-batches), lower "
            f"train.batch_size, set train.activation_checkpointing=true, or lower data.seq_len"
        )
