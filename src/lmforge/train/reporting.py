"""What a training run shows and records, apart from the loop that trains (torchtitan's
MetricsProcessor is the model): the plan printed at the start, the progress bar, the log lines of
each log step and evaluation, the measured rate and ETA, MFU, ``metrics.jsonl``, TensorBoard
events, text samples and ``plots/loss.png``.

The :class:`~lmforge.train.engine.Trainer` calls one :class:`Reporter`: :meth:`~Reporter.start`
when its loop starts, :meth:`~Reporter.on_step` after each optimizer step,
:meth:`~Reporter.step_record` at log steps, :meth:`~Reporter.on_eval` after each evaluation,
:meth:`~Reporter.write` for each record, and :meth:`~Reporter.close` when the loop ends. Only
the main rank prints or writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge import device as dev
from lmforge.models.io import atomic_write_text
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as D
from lmforge.train.config import TrainConfig
from lmforge.train.rundir import RunDir

if TYPE_CHECKING:
    from lmforge.train.engine import StepResult

PLOT_EVERY_S = 60.0  # the loss plot is refreshed at most this often during a run (and always at its end)
ASSUMED_MFU = 0.4  # a typical MFU for a well-shaped model, for the time estimate printed before step 1
ETA_AFTER_STEPS = 10  # the measured rate and ETA are printed once, this many steps into the run


def _empty_window() -> dict[str, float]:
    return {"loss_sum": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0, "grad_norm": 0.0}


class Reporter:
    """The reporting side of a run of ``cfg`` on ``device`` (``world_size`` processes; only the
    main rank prints or writes); ``run_dir`` None writes nothing. ``window`` (the steps since the
    last log step) and ``history`` (the records so far, for the plot) go with a checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        dist: D.DistInfo,
        device: torch.device,
        dtype: torch.dtype,
        run_dir: RunDir | None,
        log: Callable[[str], None],
        encoder_decoder: bool = False,
    ):
        self.cfg, self.dist, self.device, self.dtype, self.run_dir = cfg, dist, device, dtype, run_dir
        self.encoder_decoder = encoder_decoder
        self._log = log
        self.window = _empty_window()
        self.history: list[dict[str, Any]] = []
        self.last_lr: float | None = None
        self.flops_per_token: float | None = None  # known once the plan is printed
        self._peak: float | None = cfg.peak_flops or None
        self._pbar = None
        self._tb = None
        self._last_plot = time.perf_counter()
        self._eta_from = self._eta_step = 0
        self._eta_t0 = 0.0

    # ---- printing -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self._pbar is not None:
            self._pbar.write(msg)
        else:
            self._log(msg)

    @property
    def planned(self) -> bool:
        return self.flops_per_token is not None

    def print_plan(self, model: nn.Module, params: list[nn.Parameter], micro: list[dict], step: int) -> None:
        """Parameters, tokens per step, FLOPs per token, planned FLOPs and time, once at the start."""
        from lmforge.accounting import count_flops, count_params, human, human_duration

        cfg, b = self.cfg, micro[0]
        model_cfg = getattr(model, "config", None)
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        trainable = sum(p.numel() for p in {id(p): p for p in params}.values())
        seq, tgt = b["input_ids"].shape[1], None
        if self.encoder_decoder:
            tgt = (b.get("decoder_input_ids") if "decoder_input_ids" in b else b["labels"]).shape[1]
        tokens_step = sum(count_tokens(x, self.encoder_decoder) for x in micro) * self.dist.world_size
        lines = [
            f"device {dev.describe(self.device, self.dtype)}, {self.dist.world_size} process(es)"
            + (f", {cfg.strategy}" if self.dist.enabled else "")
        ]
        if model_cfg is not None and hasattr(model_cfg, "vocab_size"):
            pc = count_params(model_cfg)
            # an MLM head runs at the labelled positions only (lmforge's encoder): count those
            mlm = (
                float((b["labels"] != -100).float().mean())
                if "labels" in b and not self.encoder_decoder and getattr(model_cfg, "arch", None) == "encoder"
                else 1.0
            )
            fc = count_flops(model_cfg, seq, tgt, mlm_fraction=mlm)
            self.flops_per_token = fc.rule_6n_attention_per_token
            lines.append(
                f"parameters {human(pc.total)} total, {human(pc.non_embedding)} non-embedding"
                + (f", {human(trainable)} trainable" if trainable != pc.total else "")
            )
            lines.append(
                f"FLOPs per token {fc.training_per_token:.3g} (detailed), "
                f"{fc.rule_6n_attention_per_token:.3g} (6N + attention, used for MFU)"
            )
        else:
            self.flops_per_token = 6.0 * trainable + 0.0  # the 6N rule when the shape is unknown
            lines.append(f"parameters {human(total)} total, {human(trainable)} trainable")
        planned_tokens = tokens_step * (cfg.max_steps - step)
        planned_flops = planned_tokens * self.flops_per_token
        lines.append(
            f"tokens per step {tokens_step:,} ({cfg.batch_size} x {seq}"
            f"{f' + {tgt}' if tgt else ''}, grad_accum {cfg.grad_accum}); "
            f"{cfg.max_steps - step:,} steps = {human(planned_tokens)} tokens, "
            f"{planned_flops:.3g} FLOPs"
        )
        peak = self._peak_flops()
        if peak:
            seconds = planned_flops / (peak * self.dist.world_size * ASSUMED_MFU)
            lines.append(
                f"peak {human(peak, 'FLOP/s')} per device; estimated time {human_duration(seconds)} "
                f"at {ASSUMED_MFU:.0%} MFU"
            )
        for line in lines:
            self.log(line)

    def _peak_flops(self) -> float | None:
        """train.peak_flops, else the device's known peak (None: unknown)."""
        if self._peak is None:
            from lmforge.hardware import device_peak

            self._peak = device_peak(self.device) or 0.0
        return self._peak or None

    def mfu(self, tokens_per_s: float) -> float:
        peak = self._peak_flops()
        if not self.flops_per_token or not peak:
            return float("nan")
        return tokens_per_s / self.dist.world_size * self.flops_per_token / peak

    def _tokens_per_s(self) -> float:
        return self.window["tokens"] / max(self.window["seconds"], 1e-9)

    # ---- the loop ---------------------------------------------------------------------------------
    def start(self, step: int, train_seconds: float) -> None:
        """The loop starts at ``step``: TensorBoard, the progress bar, and the step of the ETA line."""
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.root.mkdir(parents=True, exist_ok=True)
            self._open_tensorboard()
        self._eta_from, self._eta_t0 = step, train_seconds
        self._eta_step = min(step + ETA_AFTER_STEPS, self.cfg.max_steps - 1)
        if self.dist.is_main and self.cfg.progress:
            from tqdm.auto import tqdm

            self._pbar = tqdm(
                total=self.cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def on_step(self, step: int, result: StepResult, elapsed: float, train_seconds: float) -> None:
        """After optimizer step ``step`` (1-based), which took ``elapsed`` seconds."""
        w = self.window
        w["tokens"] += result.tokens
        w["seconds"] += elapsed
        if not result.skipped:
            w["loss_sum"] += result.loss
            w["steps"] += 1
            w["grad_norm"] = result.grad_norm
        self.last_lr = result.lr
        if self._pbar is not None:
            self._pbar.update(1)
            if step % self.cfg.log_every == 0 or step == 1:
                tps = self._tokens_per_s()
                self._pbar.set_postfix_str(
                    f"loss {result.loss:.4f} lr {result.lr:.2e} {tps:,.0f} tok/s MFU {self.mfu(tps):.1%}",
                    refresh=False,
                )
        if step == self._eta_step:
            self._log_eta(step, train_seconds)

    def _log_eta(self, step: int, train_seconds: float) -> None:
        """Once, after a few steps: the measured rate and the time the remaining steps will take."""
        from lmforge.accounting import human_duration

        tps = self._tokens_per_s()
        per_step = (train_seconds - self._eta_t0) / max(step - self._eta_from, 1)
        self.log(
            f"measured after {step} steps: {tps:,.0f} tokens/s, MFU {self.mfu(tps):.1%}; "
            f"estimated time to step {self.cfg.max_steps}: {human_duration(per_step * (self.cfg.max_steps - step))}"
            " (evaluations not included)"
        )

    def step_record(self, step: int, tokens_seen: int, nonfinite_total: int, train_seconds: float) -> dict[str, Any]:
        """The record of a log step (the window's means), printed when there is no progress bar;
        the window starts again."""
        w = self.window
        tps = self._tokens_per_s()
        record = {
            "step": step,
            "loss": w["loss_sum"] / w["steps"] if w["steps"] else float("nan"),
            "lr": self.last_lr,
            "tokens": tokens_seen,
            "tokens_per_s": tps,
            "mfu": self.mfu(tps),
            "grad_norm": w["grad_norm"],
            "nonfinite_steps": nonfinite_total,
            "elapsed_s": train_seconds,
        }
        self.window = _empty_window()
        if self._pbar is None:
            self.log(
                f"step {step}/{self.cfg.max_steps}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                f"{tps:,.0f} tok/s  MFU {record['mfu']:.1%}"
            )
        return record

    def on_eval(self, step: int, metrics: dict[str, float], full: bool, seconds: float) -> None:
        """After an evaluation at ``step`` (``full``: over the whole validation split)."""
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.log(f"eval at step {step}{' (whole validation split)' if full else ''}: {shown}  [{seconds:.1f}s]")
        if self.dist.is_main and self.run_dir is not None and time.perf_counter() - self._last_plot > PLOT_EVERY_S:
            self.plot()

    def on_sample(self, step: int, text: str) -> None:
        self.log(f"sample at step {step}:\n{text}\n")
        if self.dist.is_main and self.run_dir is not None:
            with open(self.run_dir.samples, "a", encoding="utf-8") as f:
                f.write(f"--- step {step}\n{text}\n")

    def write(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl (and its TensorBoard scalars)."""
        self.history.append(record)
        if not self.dist.is_main or self.run_dir is None:
            return
        with open(self.run_dir.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(
                        k.replace("val_", "val/") if k.startswith("val_") else f"train/{k}", v, record["step"]
                    )

    def last_eval(self, step: int) -> dict[str, float]:
        """The evaluation logged at ``step`` (without the ``val_`` prefix), or {}."""
        last = [r for r in self.history if r.get("step") == step and "val_loss" in r]
        return {k[4:]: v for k, v in last[-1].items() if k.startswith("val_")} if last else {}

    def close(self) -> None:
        """The loop has ended (normally or not): close the progress bar, flush TensorBoard."""
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self._tb is not None:
            self._tb.flush()

    # ---- files --------------------------------------------------------------------------------
    def resume(self, step: int) -> None:
        """A run resumed at ``step``: metrics.jsonl is cut back to that step, so the log reads as one run."""
        self.history = []
        path = None if self.run_dir is None else self.run_dir.metrics
        if path is None or not path.is_file():
            return
        records, torn = ckpt.read_metrics(path, self.log if self.dist.is_main else lambda m: None)
        kept = [r for r in records if r.get("step", 0) <= step]
        if self.dist.is_main and (torn or len(kept) != len(records)):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        D.barrier()
        self.history = kept

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self._tb = SummaryWriter(str(self.run_dir.tensorboard))

    def plot(self) -> None:
        """plots/loss.png: training loss per log step and validation loss at each evaluation."""
        if not self.dist.is_main or self.run_dir is None:
            return
        train = [(r["step"], r["loss"]) for r in self.history if "loss" in r and math.isfinite(r["loss"])]
        val = [(r["step"], r["val_loss"]) for r in self.history if "val_loss" in r]
        if not train and not val:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train), label="train", lw=1)
        if val:
            ax.plot(*zip(*val), "o-", label="validation", ms=4)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per target token)")
        ax.set_title(self.run_dir.root.name)
        ax.grid(alpha=0.3)
        ax.legend()
        self.run_dir.plots.mkdir(exist_ok=True)
        fig.tight_layout()
        fig.savefig(self.run_dir.loss_plot, dpi=100)
        plt.close(fig)
        self._last_plot = time.perf_counter()


def count_tokens(batch: dict[str, torch.Tensor], encoder_decoder: bool) -> int:
    """Positions the model processes: the input, plus the target side of an encoder-decoder."""
    n = batch["input_ids"].numel()
    if encoder_decoder:
        n += (batch.get("decoder_input_ids") if "decoder_input_ids" in batch else batch["labels"]).numel()
    return n
