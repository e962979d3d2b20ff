"""The end-to-end jobs as Python users and the CLI call them, wired with what they borrow from
the floors above the engine.

:func:`pretrain` is :func:`lmforge.train.run.pretrain` with the inference functions it uses
passed in: the text samples at each evaluation (decoders) and the span objective's final greedy
check. Training sits below inference, so the engine and the job take these as arguments.

:func:`plan_budget` and :func:`train_budget` are ``lmforge train --budget``: the planner and the
engine together (this floor sits above both). :func:`measure_throughput` times a few training
steps of several shapes for the planner's throughput model (:mod:`lmforge.plan.throughput`), and
:func:`machine_throughput` keeps those rates in the per-user cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmforge.accounting import human, human_duration
from lmforge.errors import ConfigError
from lmforge.train.config import RunConfig
from lmforge.train.engine import FitResult

if TYPE_CHECKING:
    from lmforge.plan.allocate import Allocation


def pretrain(
    cfg: RunConfig, resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print
) -> FitResult:
    """Prepare data, build the model and train it as ``cfg`` says (``lmforge train``)."""
    from lmforge.infer.fill import span_filling_metrics
    from lmforge.infer.generate import generate
    from lmforge.train.run import pretrain as run

    return run(cfg, resume=resume, overwrite=overwrite, log=log, generate=generate, fill_spans=span_filling_metrics)


# ---------------------------------------------------------------------------------------------
# the best model for a budget: measure the machine, plan, train, compare
# ---------------------------------------------------------------------------------------------

FALLBACK_LAW = "chinchilla"  # the planner's default for a run none of lmforge's fitted laws was measured on
MATCHED_FIELDS = ("source", "tokenizer", "vocab_size", "objective", "seq_len", "arch")  # what a law's units hang on
MEASURE_SECONDS = 0.5  # timed seconds per measured shape, within the step counts below
MEASURE_MIN_STEPS = 3
MEASURE_MAX_STEPS = 20
MEASURE_SPREAD = 4.0  # shapes measured from 1/4x to 4x the planned size (the printed frontier)
MEASURE_SIZES = 5
GUESS_MFU = 0.3  # for the first guess of the planned size, before anything is measured
MIN_STEPS = 10
EVALS = 4  # evaluations in a budgeted run (besides the final one over the whole validation split)


@dataclass
class BudgetPlan:
    """What ``lmforge train --budget`` trains: the allocation, the run config made of it, and the law's provenance."""

    allocation: Allocation
    config: RunConfig
    law_note: str
    tokens_per_step: int  # positions the engine counts per step (source and target of an encoder-decoder)
    scale: float = 1.0  # the trained size over the planned one (a check of the plan: 0.5, 2)
    predicted_loss: float | None = None  # the law at the trained shape and the tokens its steps give

    def summary(self) -> str:
        t, a = self.config.train, self.allocation
        m = self.config.model
        size = (
            f"not the planned size but {self.scale:g}x it (L{m.n_layer}-d{m.d_model}), same wall time; "
            if self.scale != 1
            else ""
        )
        predicted = f", predicted loss {self.predicted_loss:.4f}" if self.predicted_loss is not None else ""
        return "\n".join(
            [
                a.summary(),
                self.law_note,
                f"run: {self.config.run_dir}: {size}{t.max_steps:,} steps of {t.batch_size} sequences "
                f"({human(t.max_steps * self.tokens_per_step)} tokens), peak lr {t.lr:.3g} "
                f"({t.schedule}, warmup {t.warmup_steps}), evaluation every {t.eval_every} steps "
                f"({t.eval_batches} batches) and over the whole validation split at the end{predicted}",
            ]
        )

    def to_dict(self) -> dict:
        return {
            "allocation": self.allocation.to_dict(),
            "law_note": self.law_note,
            "config": self.config.to_dict(),
            "scale": self.scale,
            "predicted_loss": self.predicted_loss,
        }


def _run_fields(base: RunConfig) -> dict:
    d, m = base.data, base.model
    return {
        "source": d.source,
        "tokenizer": d.tokenizer,
        "vocab_size": m.vocab_size,
        "objective": d.objective,
        "seq_len": d.seq_len,
        "arch": m.arch,
    }


def _mismatches(fitted: dict, base: RunConfig) -> list[str]:
    """Where ``base`` differs from the run a law was fitted on (its losses are then in other units)."""
    run = _run_fields(base)
    return [f"{k} {fitted[k]!r} (this run: {run[k]!r})" for k in MATCHED_FIELDS if k in fitted and fitted[k] != run[k]]


def default_law(base: RunConfig) -> str:
    """The law ``--budget`` plans with unless given one: lmforge's own fit of this run's data,
    tokenizer, context and objective when it ships one, else the published default."""
    from lmforge.plan.laws import LAWS, fitted_on

    for name in LAWS:
        fitted = fitted_on(name)
        if fitted and not _mismatches(fitted, base):
            return name
    return FALLBACK_LAW


def _law_note(spec, law, fitted: dict | None, base: RunConfig, recipe: dict) -> str:
    """Where the law comes from, whether it holds for this run, and what of its recipe the run takes."""
    from lmforge.plan.laws import LAW_NOTES

    if law.name in LAW_NOTES and fitted:
        note = f"law provenance: {law.name!r}, fitted by lmforge ({LAW_NOTES[law.name]})"
    elif law.name in LAW_NOTES and spec is None:
        note = (
            f"law provenance: {law.name!r}, the planner's default ({LAW_NOTES[law.name]}). None of lmforge's "
            "fitted laws was measured on this run's data, tokenizer, context and objective, so this one comes "
            "from other data and another tokenizer: its losses are not in this run's units and the predicted "
            "loss is not a calibrated prediction. Fit one on your data with `lmforge sweep` and pass it with "
            "--law DIR/law-approach3.json."
        )
    elif law.name in LAW_NOTES and str(spec).lower() == law.name:
        note = f"law provenance: the preset {law.name!r} ({LAW_NOTES[law.name]}), fitted on other data than this run's"
    else:
        note = f"law provenance: {spec} (law {law.name!r})"
    if fitted:
        off = _mismatches(fitted, base)
        if off:
            note += f"; WARNING: fitted on {', '.join(off)}: its losses are not this run's"
        if recipe:
            taken = " and ".join(f"{k} {v:g}" for k, v in recipe.items())
            note += (
                f"; {taken} as every run of its sweep trained with (a law holds for the recipe it was "
                "measured with), not the DeepSeek suggestion above"
            )
    return note


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _setting(base: RunConfig, batch_size: int, dtype) -> dict:
    """What measured rates depend on besides the machine and the shape."""
    import hashlib
    import json

    import torch

    shape_fields = ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "n_encoder_layer", "n_decoder_layer")
    family = {k: v for k, v in base.model.to_dict().items() if k not in shape_fields and not k.endswith("_id")}
    return {
        "arch": base.model.arch,
        "family": hashlib.sha1(json.dumps(family, sort_keys=True).encode()).hexdigest()[:10],
        "objective": base.data.objective,
        "vocab_size": base.model.vocab_size,
        "seq_len": base.data.seq_len,
        "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }


def measure_throughput(
    base: RunConfig,
    shapes,
    batch_size: int,
    log: Callable[[str], None] = print,
    seconds: float = MEASURE_SECONDS,
    peak_flops: float | None = None,
):
    """Tokens/s and MFU of each model shape: a few optimizer steps of the engine's own training step
    on the run's data (``base``'s dataset, prepared), batches of ``batch_size`` sequences.

    One warm-up step, then timed steps until ``seconds`` have passed (at least MEASURE_MIN_STEPS,
    at most MEASURE_MAX_STEPS); the rate is the timed tokens over the timed seconds.
    """
    import time

    import torch

    from lmforge import device as dev
    from lmforge.accounting import count_flops, count_params
    from lmforge.hardware import device_peak
    from lmforge.models import build_model
    from lmforge.plan.throughput import Throughput, ThroughputPoint, machine_id
    from lmforge.train import distributed as D
    from lmforge.train.engine import Trainer
    from lmforge.train.run import make_batch_sources, prepare_dataset

    runtime = D.setup_runtime(base.train)  # once: the shapes below change the model and the batch only
    device, info = runtime.device, runtime.dist
    dataset = prepare_dataset(base, info, log)
    peak = peak_flops or base.train.peak_flops or device_peak(device)
    if not peak:
        raise ConfigError(f"device: no peak FLOP/s known for {_device_name(device)}; set train.peak_flops")
    train = {
        **base.train.to_dict(),
        "batch_size": batch_size,
        "grad_accum": 1,
        "progress": False,
        "tensorboard": False,
        "eval_every": 0,
    }
    points = []
    for shape in shapes:
        cfg = base.replace(model=shape.to_dict(), train=train)
        torch.manual_seed(cfg.train.seed)
        batches = make_batch_sources(cfg, dataset, info)[0]
        trainer = Trainer(build_model(cfg.model), cfg.train, batches, log=log, runtime=runtime)
        trainer.train_step()  # warm-up: allocations and first-call overheads
        dev.synchronize(device)
        steps, tokens, t0 = 0, 0, time.perf_counter()
        while steps < MEASURE_MAX_STEPS and (steps < MEASURE_MIN_STEPS or time.perf_counter() - t0 < seconds):
            tokens += trainer.train_step().tokens
            dev.synchronize(device)
            steps += 1
        rate = tokens / (time.perf_counter() - t0)
        fpt = count_flops(cfg.model, cfg.data.seq_len).rule_6n_attention_per_token
        point = ThroughputPoint(_label(cfg.model), count_params(cfg.model).total, fpt, rate, rate * fpt / peak, steps)
        log(f"  measured {point.label}: {human(point.params)} parameters, {human(rate)} tokens/s, MFU {point.mfu:.1%}")
        points.append(point)
        del trainer
    return Throughput(
        device=_device_name(device),
        machine=machine_id(torch.get_num_threads()),
        peak_flops=peak,
        points=points,
        setting=_setting(base, batch_size, runtime.dtype),
        source=f"measured {time.strftime('%Y-%m-%d')}",
    )


def _label(model) -> str:
    return f"L{model.n_layer}-d{model.d_model}"


def machine_throughput(
    base: RunConfig,
    shapes,
    batch_size: int,
    log: Callable[[str], None] = print,
    mfu: float | None = None,
    remeasure: bool = False,
):
    """The throughput model of this machine for ``base``'s run: the cached points of the shapes,
    the missing ones (all with ``remeasure``) measured and cached; with ``mfu`` a fixed utilisation instead."""
    import time

    import torch

    from lmforge.hardware import device_peak
    from lmforge.plan.throughput import (
        cached_peak,
        fixed_throughput,
        load_cached,
        machine_id,
        store,
    )
    from lmforge.train.distributed import setup_runtime

    runtime = setup_runtime(base.train)  # the threads, device and dtype the measured runs will use
    machine, name = machine_id(torch.get_num_threads()), _device_name(runtime.device)
    peak = base.train.peak_flops or cached_peak(machine, name) or device_peak(runtime.device)
    if mfu is not None:
        return fixed_throughput(mfu, peak, name, machine)
    setting = _setting(base, batch_size, runtime.dtype)
    cached = load_cached(machine, name, setting)
    have = {p.label for p in cached.points} if cached else set()
    todo = [s for s in shapes if remeasure or _label(s) not in have]
    if not todo:
        return cached
    log(f"measuring the throughput of {len(todo)} shape(s) on {name} ({machine}), batch {batch_size}:")
    t0 = time.perf_counter()
    measured = measure_throughput(base, todo, batch_size, log, peak_flops=peak)
    path = store(measured, time.strftime("%Y-%m-%d"))
    log(f"  {time.perf_counter() - t0:.1f} s; cached in {path}")
    return load_cached(machine, name, setting) or measured


def _ladder(base: RunConfig, centre: float, counts: str):
    """MEASURE_SIZES shapes log-spaced within MEASURE_SPREAD x of ``centre`` parameters (the
    planner's rule on the run's model, keeping its head size), the too-small ones dropped."""
    import numpy as np

    from lmforge.plan.shapes import shape_for

    shapes = {}
    for n in np.geomspace(centre / MEASURE_SPREAD, centre * MEASURE_SPREAD, MEASURE_SIZES):
        shape = shape_for(float(n), base.model, counts, head_dim=base.model.head_dim)
        shapes.setdefault(_label(shape), shape)
    return list(shapes.values())


def _law_count(pc, law) -> int:
    """The parameters a law's N counts: all of them, or the non-embedding ones (Kaplan)."""
    return pc.total if law.counts == "total" else pc.non_embedding


def _positions_per_sequence(base: RunConfig) -> float:
    """Positions the engine counts per training sequence (what tokens/s and the plan's D count):
    the context, plus the target side of an encoder-decoder, read off a few real batches."""
    if base.model.arch != "encoder-decoder":
        return float(base.data.seq_len)
    from lmforge.data import make_batches
    from lmforge.device import resolve_device
    from lmforge.train import distributed as D
    from lmforge.train.reporting import count_tokens
    from lmforge.train.run import objective_options, prepare_dataset

    dataset = prepare_dataset(base, D.setup(resolve_device(base.train.device)), lambda m: None)
    sampler = make_batches(
        base.data.objective, dataset, 16, base.data.seq_len, seed=base.train.seed, **objective_options(base)
    )
    return sum(count_tokens(sampler.next_batch(), True) for _ in range(4)) / 64


def plan_budget(
    base: RunConfig,
    *,
    hours: float | None = None,
    flops: float | None = None,
    law=None,
    mfu: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    scale: float = 1.0,
    remeasure: bool = False,
    log: Callable[[str], None] = print,
) -> BudgetPlan:
    """The run that trains the best model ``base``'s recipe and data allow in ``hours`` of training
    on this machine (time-optimal) or in ``flops`` (compute-optimal): the allocation of the law
    (default: :func:`default_law`), with the shape, batch, learning rate, steps and evaluation cadence.

    The dataset is prepared first (the vocabulary sizes the models). The batch and learning rate
    are those the law was fitted with when it records them (a sweep's law), else DeepSeek LLM's
    fits; ``batch_size`` / ``lr`` replace either. Unless ``mfu`` fixes the utilisation, the
    machine's rates come from the cache or are measured (:func:`machine_throughput`) for
    MEASURE_SIZES shapes around a first guess of the size, at the power of two nearest the run's
    batch, and again around the plan when it lands beyond the measured sizes or at another batch;
    ``remeasure`` measures the shapes again rather than reading the cache. ``scale`` trains
    ``scale`` times the planned size instead, for the same budget at its own rate (checking the plan).
    """
    import math

    from lmforge.accounting import count_flops, count_params
    from lmforge.plan import allocate
    from lmforge.plan.laws import fitted_on, load_law
    from lmforge.plan.shapes import shape_for, smallest_shape
    from lmforge.plan.sweep import with_dataset

    if (hours is None) == (flops is None):
        raise ConfigError("budget: give one of a wall time (--budget) or FLOPs (--flops)")
    if not (scale > 0 and math.isfinite(scale)):
        raise ConfigError(f"budget: the size scale must be a positive number, got {scale}")
    base = with_dataset(base, log)
    chosen = law if law is not None else default_law(base)
    law_obj = load_law(chosen)
    fitted = fitted_on(chosen) or {}
    recipe = {}  # what the run takes of the recipe the law was measured with (unless the user gives it)
    if batch_size is None and fitted.get("batch_size"):
        batch_size = recipe["batch"] = fitted["batch_size"]
    if lr is None and fitted.get("lr"):
        lr = recipe["peak lr"] = fitted["lr"]
    seq = base.data.seq_len
    template = base.model.replace(max_positions=seq)
    accum = base.train.grad_accum
    per_seq = _positions_per_sequence(base)

    def plan(tp):
        return allocate(
            flops, law=law_obj, hours=hours, template=template, seq_len=seq, head_dim=template.head_dim, throughput=tp
        )

    def batch_of(a) -> int:  # sequences per step: given, or the plan's, a multiple of grad_accum
        b = batch_size or max(1, round(a.batch_tokens / per_seq))
        return max(accum, round(b / accum) * accum)

    def measured_at(b: int) -> int:  # rates are measured at a power of two near the batch: fewer settings to cache
        return max(accum, 2 ** round(math.log2(b)))

    base_t = base.replace(model=template)
    a = plan(machine_throughput(base_t, [], 1, log, mfu=mfu or GUESS_MFU))  # the machine's peak at a guessed MFU
    tp = a.throughput
    if mfu is None:
        smallest = count_params(smallest_shape(template, template.head_dim)).total
        measured = set()  # what --remeasure has measured again already
        for _ in range(3):  # measure around the guess; again while the plan's frontier or batch is not covered
            at = measured_at(batch_of(a))
            shapes = [s for s in _ladder(base_t, a.params, law_obj.counts) if (at, _label(s)) not in measured]
            tp = machine_throughput(base_t, shapes, at, log, remeasure=remeasure)
            measured |= {(at, _label(s)) for s in shapes}
            a = plan(tp)
            total, sizes = count_params(a.shape).total, [p.params for p in tp.points]
            low = min(sizes) <= 1.5 * max(total / MEASURE_SPREAD, smallest)
            if low and max(sizes) >= total * MEASURE_SPREAD / 1.5 and measured_at(batch_of(a)) == at:
                break
    shape, tokens = a.shape, a.shape_tokens
    if scale != 1:  # another size, trained for the same budget: the same seconds at its own rate, or the same FLOPs
        shape = shape_for(a.params * scale, template, law_obj.counts, head_dim=template.head_dim)
    pc = count_params(shape)
    if scale != 1 and hours is not None:
        tokens = hours * 3600 * tp.tokens_per_second(pc.total, count_flops(shape, seq).rule_6n_attention_per_token)
    elif scale != 1:
        tokens = a.train_flops / (6 * _law_count(pc, law_obj))
    batch = batch_of(a)
    tokens_per_step = round(batch * per_seq)
    steps = int(tokens // tokens_per_step)
    if steps < MIN_STEPS:
        raise ConfigError(
            f"budget: the planned {pc.total:,}-parameter model trains on {human(tokens)} "
            f"tokens, {steps} steps of {batch} x {seq}; give a larger budget (at least {MIN_STEPS} steps)"
        )
    every = math.ceil(steps / EVALS)
    cfg = base.replace(
        model=shape.to_dict(),
        train={
            **base.train.to_dict(),
            "batch_size": batch,
            "lr": lr or a.learning_rate,
            "max_steps": steps,
            "warmup_steps": base.train.warmup_for(steps),
            "eval_every": every,
            "checkpoint_every": every,
            "peak_flops": tp.peak_flops,  # the MFU the run logs is the plan's
        },
    )
    predicted = law_obj.loss(_law_count(pc, law_obj), steps * tokens_per_step)
    return BudgetPlan(
        a,
        cfg,
        _law_note(law, law_obj, fitted, base, recipe),
        tokens_per_step,
        scale,
        None if predicted is None else float(predicted),
    )


@dataclass
class BudgetResult:
    """A budgeted run: its plan, the engine's result, and the held-out loss achieved against predicted."""

    plan: BudgetPlan
    fit: FitResult
    achieved_loss: float | None  # the final evaluation over the whole validation split (nats per token)
    predicted_loss: float | None  # the law at the trained model's size and the tokens it trained on

    def summary(self) -> str:
        a, f = self.plan.allocation, self.fit
        planned = a.time.seconds if a.time else None
        lines = [
            f"budget run: {f.step:,} steps, {human(f.tokens)} tokens in {human_duration(f.train_seconds)} of training"
            + (f" (planned {human_duration(planned)})" if planned else "")
        ]
        if self.achieved_loss is not None and self.predicted_loss is not None:
            gap = self.achieved_loss / self.predicted_loss - 1
            bpb = f.metrics.get("bpb")
            lines.append(
                f"held-out loss: achieved {self.achieved_loss:.4f} nats/token"
                + (f" ({bpb:.4f} bits/byte)" if bpb is not None else "")
                + f", predicted {self.predicted_loss:.4f} by law {a.law.name!r} ({gap:+.1%})"
            )
        elif self.achieved_loss is not None:
            lines.append(f"held-out loss: achieved {self.achieved_loss:.4f}; law {a.law.name!r} predicts no loss")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            **self.plan.to_dict(),
            "steps": self.fit.step,
            "tokens": self.fit.tokens,
            "train_seconds": self.fit.train_seconds,
            "achieved_loss": self.achieved_loss,
            "predicted_loss_at_trained_tokens": self.predicted_loss,
            "metrics": self.fit.metrics,
        }


BUDGET_FILE = "budget.json"


def train_budget(plan: BudgetPlan, overwrite: bool = False, log: Callable[[str], None] = print) -> BudgetResult:
    """Train ``plan``'s run and compare its held-out loss with the law's prediction (written to
    ``budget.json`` in the run directory)."""
    import json
    from pathlib import Path

    from lmforge.accounting import count_params

    fit = pretrain(plan.config, overwrite=overwrite, log=log)
    a = plan.allocation
    predicted = a.law.loss(_law_count(count_params(plan.config.model), a.law), fit.tokens) if fit.tokens else None
    out = BudgetResult(plan, fit, fit.metrics.get("loss"), None if predicted is None else float(predicted))
    run_dir = Path(plan.config.run_dir)
    if run_dir.is_dir():
        (run_dir / BUDGET_FILE).write_text(json.dumps(out.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return out
