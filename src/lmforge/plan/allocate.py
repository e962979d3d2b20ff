"""Compute-optimal allocation: how large a model, trained on how many tokens, for a budget.

:func:`allocate` turns a budget (FLOPs, device-hours or dollars) and a law into N*, D*, the
predicted loss, the frontier around it, a concrete model config with its exact parameter count,
batch-size and learning-rate suggestions (DeepSeek LLM 2024: B_opt = 0.2920 C^0.3271 tokens,
eta_opt = 0.3118 C^-0.1250), wall time and cost, and warnings (data-constrained budgets).

Two variants of the question:

* the inverse: the smallest compute that reaches a target loss (``target_loss`` without a budget);
* inference-aware (Sardana et al. 2024): minimise 6 N D_train + 2 N D_inference subject to
  L(N, D_train) = target loss (:func:`inference_optimal`); with a budget and no target loss, the
  target is the loss of the compute-optimal model for that budget.

And a budget in wall time on a measured machine (``hours`` with a ``throughput`` model,
:mod:`lmforge.plan.throughput`): minimise L(N, D) subject to D / tokens_per_second(N) <= T
(:func:`time_optimal`). Where MFU does not depend on N this is the compute-optimal answer for the
FLOPs the time buys; where small models run at lower MFU, the time-optimal model is larger than
the compute-optimal one of the same FLOPs (see :func:`time_optimal`).

About 580 lines: :func:`allocate` and its answer (:class:`Allocation`, whose ``summary()`` is
the text ``lmforge plan`` prints, about 100 lines) stay together so that every figure the
planner computes is printed from the field that holds it; budgets (:mod:`lmforge.plan.budget`)
and the inference-aware and time-optimal variants (:mod:`lmforge.plan.variants`) are their own
modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.accounting import (
    GiB,
    MemoryEstimate,
    ParamCount,
    count_flops,
    count_params,
    estimate_memory,
    human,
    human_bytes,
    human_duration,
)
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.hardware import TimeCost, device_from_cuda_name, lookup_device, training_time
from lmforge.plan.budget import Budget, check_positive, resolve_budget
from lmforge.plan.fit import E_COLLAPSED
from lmforge.plan.laws import LAW_NOTES, Law, ParametricLaw, describe, load_law
from lmforge.plan.shapes import ASPECT, default_template, shape_for, smallest_shape
from lmforge.plan.throughput import Throughput
from lmforge.plan.variants import InferenceAware, as_parametric, inference_optimal, rate_of_size, time_optimal

FRONTIER_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def deepseek_batch_tokens(flops: float) -> float:
    """DeepSeek LLM's optimal batch size in tokens: 0.2920 C^0.3271."""
    return 0.2920 * flops**0.3271


def deepseek_learning_rate(flops: float) -> float:
    """DeepSeek LLM's optimal peak learning rate: 0.3118 C^-0.1250."""
    return 0.3118 * flops**-0.1250


# ---------------------------------------------------------------------------------------------
# the allocation
# ---------------------------------------------------------------------------------------------


@dataclass
class Allocation:
    """The answer of :func:`allocate`; ``to_dict()`` for JSON, ``summary()`` for people."""

    law: Law
    law_formula: str
    counts: str  # which parameters N counts: total or non_embedding
    budget: Budget
    params: float  # N*
    tokens: float  # D*
    loss: float | None
    frontier: list[dict[str, float | None]]
    shape: ModelConfig
    shape_params: ParamCount
    shape_tokens: float  # tokens the shape trains on within the budget
    shape_loss: float | None
    shape_flops_per_token: dict[str, float]
    batch_tokens: float
    batch_sequences: int
    learning_rate: float
    seq_len: int
    time: TimeCost | None = None
    memory: list[MemoryEstimate] = field(default_factory=list)
    inference: InferenceAware | None = None
    target_loss: float | None = None
    warnings: list[str] = field(default_factory=list)
    train_flops: float = 0.0  # 6 N D of the chosen model: the budget, or more for the inference-aware one
    compute_optimal: dict[str, float | None] = field(default_factory=dict)  # N*, D*, loss at the budget
    throughput: Throughput | None = None  # the measured machine: time from tokens/s, not from a fixed MFU
    seconds: float | None = None  # a wall-time budget (time-optimal allocation)

    @property
    def objective(self) -> str:
        """What params / tokens / shape / batch / time answer: the compute-, time- or inference-optimal model."""
        if self.inference is not None:
            return "inference-aware"
        return "time-optimal" if self.seconds is not None else "compute-optimal"

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": self.law.to_dict(),
            "law_formula": self.law_formula,
            "counts": self.counts,
            "budget": self.budget.to_dict(),
            "params": self.params,
            "tokens": self.tokens,
            "tokens_per_param": self.tokens_per_param,
            "loss": self.loss,
            "target_loss": self.target_loss,
            "frontier": self.frontier,
            "shape": {
                "config": self.shape.to_dict(),
                "params": self.shape_params.to_dict(),
                "tokens": self.shape_tokens,
                "loss": self.shape_loss,
                "training_flops_per_token": self.shape_flops_per_token,
            },
            "batch_tokens": self.batch_tokens,
            "batch_sequences": self.batch_sequences,
            "learning_rate": self.learning_rate,
            "seq_len": self.seq_len,
            "time": self.time.to_dict() if self.time else None,
            "memory": [m.to_dict() for m in self.memory],
            "inference": self.inference.to_dict() if self.inference else None,
            "warnings": self.warnings,
            "objective": self.objective,
            "train_flops": self.train_flops,
            "compute_optimal": self.compute_optimal,
            "seconds": self.seconds,
            "throughput": self.throughput.to_dict() if self.throughput else None,
        }

    def summary(self) -> str:
        b, s, p = self.budget, self.shape, self.shape_params
        loss = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        head = f"budget: {b.flops:.3g} FLOPs"
        tp = self.throughput
        if self.seconds is not None:
            head = (
                f"budget: {human_duration(self.seconds)} of training on {tp.device} ({tp.machine}): "
                f"{b.flops:.3g} FLOPs at the planned size's MFU {b.mfu:.1%} of {human(tp.peak_flops, 'FLOP/s')}"
            )
        elif tp is not None:
            head += f" on {tp.device} ({tp.machine})"
        elif b.device:
            head += (
                f" = {b.gpus} x {b.device} for {b.hours:,.1f} h at MFU {b.mfu:.0%}"
                f" ({b.hours * b.gpus:,.0f} device-hours, ${b.dollars:,.0f} at ${b.price:.2f}/h)"
            )
        if self.target_loss is not None and self.inference is None:
            head += f"  (the least compute reaching loss {self.target_loss})"
        lines = [head, f"law: {self.law.name}: {self.law_formula}", ""]
        answer = (
            f"N* = {human(self.params)} parameters ({self.counts.replace('_', '-')}), D* = {human(self.tokens)} "
            f"tokens, {self.tokens_per_param:.1f} tokens/parameter, loss {loss(self.loss)}"
        )
        if self.inference:
            i, co = self.inference, self.compute_optimal
            saved = 1 - i.total_flops / i.chinchilla_total_flops
            lines += [
                f"inference-aware (Sardana et al., {human(i.inference_tokens)} inference tokens): {answer}",
                f"  training {i.train_flops:.3g} FLOPs ({i.train_flops / b.flops:.2f}x the budget, whose "
                f"compute-optimal loss is the target) + inference {i.inference_flops:.3g} = "
                f"{i.total_flops:.3g} FLOPs, vs {i.chinchilla_total_flops:.3g} for the compute-optimal model "
                f"({saved:.1%} saved)",
                f"  compute-optimal at the budget, for comparison: N = {human(co['params'])}, "
                f"D = {human(co['tokens'])}, loss {loss(co['loss'])}",
            ]
        elif self.seconds is not None:
            co = self.compute_optimal
            why = "FLOPs per parameter change with size" if tp.fixed_mfu else "MFU changes with size on this machine"
            lines += [
                f"time-optimal: {answer}",
                f"  compute-optimal for the same {self.train_flops:.3g} FLOPs: N = {human(co['params'])}, "
                f"D = {human(co['tokens'])}, loss {loss(co['loss'])}; the time-optimal model is "
                f"{self.params / co['params']:.2f}x its size ({why})",
            ]
        else:
            lines.append(f"compute-optimal: {answer}")
        timed = self.seconds is not None
        lines += [
            "",
            f"frontier at {human_duration(self.seconds)} of training (each size at its own MFU):"
            if timed
            else f"frontier at {self.train_flops:.3g} training FLOPs:",
            f"  {'N / N*':>7} {'params':>9} {'tokens':>9}" + (f" {'MFU':>6}" if timed else "") + f" {'loss':>8}",
        ]
        for row in self.frontier:
            lines.append(
                f"  {row['scale']:>7g} {human(row['params']):>9} {human(row['tokens']):>9}"
                + (f" {row['mfu']:>6.1%}" if timed else "")
                + f" {loss(row['loss']):>8}"
            )
        lines += [
            "",
            f"model: {s.arch}, n_layer {s.n_layer}, d_model {s.d_model}, n_head {s.n_head} "
            f"(head {s.head_dim}, kv {s.kv_heads}), ffn {s.ffn_dim} {s.activation}, vocab {s.vocab_size}, "
            f"context {s.max_positions}",
            f"  {p.total:,} parameters ({p.non_embedding:,} non-embedding); trains on "
            f"{human(self.shape_tokens)} tokens, loss {loss(self.shape_loss)}",
            "  training FLOPs/token: 6N {6n:.4g}, +attention {palm:.4g}, detailed {detailed:.4g}".format(
                **self.shape_flops_per_token
            ),
            f"batch: {human(self.batch_tokens)} tokens = {self.batch_sequences} sequences of {self.seq_len}; "
            f"peak learning rate {self.learning_rate:.3g} (DeepSeek LLM fits)",
        ]
        if self.time and tp is not None:
            t = self.time
            lines.append(
                f"time: {human_duration(t.seconds)} at {human(self.shape_tokens / t.seconds)} tokens/s, MFU "
                f"{t.mfu:.1%} ({t.flops:.3g} FLOPs: the shape's 6N + attention per token x "
                f"{human(self.shape_tokens)} tokens)"
            )
        elif self.time:
            t = self.time
            lines.append(
                f"time: {t.seconds / 3600:,.1f} h ({t.days:,.1f} days) on {t.n_devices} x {t.device} at MFU "
                f"{t.mfu:.0%}, {t.device_hours:,.0f} device-hours, ${t.dollars:,.0f} ({t.flops:.3g} FLOPs: "
                f"the shape's 6N + attention per token x {human(self.shape_tokens)} tokens)"
            )
        for m in self.memory:
            lines.append(
                f"memory per device ({m.strategy} x{m.world_size}, micro-batch {m.micro_batch}, "
                f"{'checkpointing' if m.checkpointing else 'no checkpointing'}): {human_bytes(m.total)}"
            )
        if tp is not None:
            lines.append(tp.summary())
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _vocab_from_tokenizer(path: str | Path) -> int:
    p = Path(path)
    p = p / "tokenizer.json" if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"tokenizer: {p} not found; give a tokenizer.json or a directory holding one")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(p)).get_vocab_size()
    except Exception as e:  # tokenizers raises its own exception types
        raise ConfigError(f"tokenizer: cannot read {p} ({str(e).splitlines()[0]})") from None


def allocate(
    flops: float | None = None,
    *,
    law: Law | str = "chinchilla",
    device: str | None = None,
    hours: float | None = None,
    gpus: int = 1,
    mfu: float = 0.4,
    dollars: float | None = None,
    price: float | None = None,
    target_loss: float | None = None,
    inference_tokens: float | None = None,
    available_tokens: float | None = None,
    template: ModelConfig | None = None,
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    seq_len: int | None = None,
    aspect: tuple[float, float] = ASPECT,
    head_dim: int | None = None,
    micro_batch: int = 1,
    throughput: Throughput | None = None,
) -> Allocation:
    """The compute-optimal model and data size for a budget (see the module docstring).

    ``template`` supplies the architecture of the suggested config (default: the LLaMA recipe);
    ``vocab_size`` / ``tokenizer`` and ``seq_len`` override its vocabulary and context.

    With a ``throughput`` model of the machine (:mod:`lmforge.plan.throughput`), ``hours`` is a
    wall-time budget on it and the answer is the time-optimal model (:func:`time_optimal`);
    ``flops`` keeps the compute-optimal answer and takes its time from the measured rates.
    """
    law = load_law(law)
    if throughput is not None:
        _check_timed(flops, device, hours, gpus, dollars, target_loss, inference_tokens)
        budget = Budget(flops=flops or 0.0, device=throughput.device, hours=hours)
    else:
        budget = resolve_budget(flops, device, hours, gpus, mfu, dollars, price)
    for name, value in (
        ("target_loss", target_loss),
        ("available_tokens", available_tokens),
        ("vocab_size", vocab_size),
        ("seq_len", seq_len),
        ("head_dim", head_dim),
        ("micro_batch", micro_batch),
    ):
        check_positive(name, value)
    if budget is None:
        if target_loss is None:
            raise ConfigError(
                "budget: give --flops, --device with --hours, --dollars (with --device), or --target-loss"
            )
        c = as_parametric(law, "a target loss").compute_for_loss(target_loss)
        budget = resolve_budget(c, device, None, gpus, mfu, None, price)
    elif target_loss is not None and inference_tokens is None:
        raise ConfigError(
            "target_loss: give either a budget or a target loss (the budget then follows), "
            "or a target loss with inference tokens"
        )
    c = budget.flops

    # the template: architecture from the user, vocabulary and context from the options
    template = template or default_template()
    if tokenizer is not None:
        vocab_size = _vocab_from_tokenizer(tokenizer)
    changes = {k: v for k, v in (("vocab_size", vocab_size), ("max_positions", seq_len)) if v is not None}
    template = template.replace(**changes) if changes else template
    seq_len = template.max_positions

    smallest = smallest_shape(template, head_dim)
    n_small = count_params(smallest).total if law.counts == "total" else count_params(smallest).non_embedding
    seconds = rate = None
    if throughput is not None:  # sizes up to far beyond the compute-optimal one of the most FLOPs the time could buy
        most = (hours or 1.0) * 3600 * throughput.peak_flops * throughput.max_mfu
        n_max = max(64 * float(law.optimal(flops or most)[0]), 4 * n_small)
        n_max = max([n_max] + [4.0 * p.params for p in throughput.points])
        rate = rate_of_size(throughput, template, law.counts, aspect, head_dim, seq_len, n_small, n_max)
    if throughput is not None and hours is not None:
        seconds = hours * 3600
        n_opt, d_opt = time_optimal(law, seconds, rate, n_small, n_max)
        if n_opt <= n_small * 1.001:
            raise ConfigError(
                f"budget: {human_duration(seconds)} is too short: the time-optimal model is the smallest of "
                f"this vocabulary ({human(n_small)} parameters, vocab {template.vocab_size}), and smaller ones "
                f"would do better; give a longer budget or a smaller vocabulary"
            )
        c = 6 * n_opt * d_opt
        budget.flops, budget.mfu = c, throughput.mfu(rate.total(n_opt))
    else:
        n_opt, d_opt = (float(x) for x in law.optimal(c))
    if n_opt < n_small:
        raise ConfigError(
            f"budget: {c:.3g} FLOPs is too small: the compute-optimal model has {human(n_opt)} "
            f"parameters, fewer than the smallest model of this vocabulary ({human(n_small)}, "
            f"vocab {template.vocab_size}); give at least {_least_flops(law, c, n_opt, n_small):.2g} "
            f"FLOPs or a smaller vocabulary"
        )

    inference = None
    n_pick, d_pick = n_opt, d_opt
    if inference_tokens is not None:  # the answer is then the inference-aware model, everywhere below
        goal = (
            target_loss
            if target_loss is not None
            else _loss(as_parametric(law, "inference-aware allocation"), n_opt, d_opt)
        )
        inference = inference_optimal(law, goal, inference_tokens)
        n_pick, d_pick = inference.params, inference.train_tokens
        if n_pick < n_small:
            raise ConfigError(
                f"inference_tokens: the inference-aware model has {human(n_pick)} parameters, fewer "
                f"than the smallest model of this vocabulary ({human(n_small)}); give a larger budget "
                f"or fewer inference tokens"
            )
    c_train = 6 * n_pick * d_pick
    shape = shape_for(n_pick, template, law.counts, aspect, head_dim)
    pc = count_params(shape)
    n_shape = pc.total if law.counts == "total" else pc.non_embedding
    fc = count_flops(shape, seq_len)
    if seconds is not None:  # every size trains for the same wall time, at its own rate
        shape_tokens = seconds * throughput.tokens_per_second(pc.total, fc.rule_6n_attention_per_token)
        frontier = []
        for s in FRONTIER_SCALES:
            n, d = n_pick * s, seconds * rate(n_pick * s)
            mfu_n = throughput.mfu(rate.total(n))
            frontier.append({"scale": s, "params": n, "tokens": d, "loss": _loss(law, n, d), "mfu": mfu_n})
    else:
        shape_tokens = c_train / (6 * n_shape)
        frontier = [
            {
                "scale": s,
                "params": n_pick * s,
                "tokens": c_train / (6 * n_pick * s),
                "loss": _loss(law, n_pick * s, c_train / (6 * n_pick * s)),
            }
            for s in FRONTIER_SCALES
        ]
    batch = deepseek_batch_tokens(c_train)
    batch_sequences = max(1, round(batch / seq_len))

    warnings = []
    pick_loss = _loss(law, n_pick, d_pick)
    if isinstance(law, ParametricLaw) and pick_loss is not None and law.E < E_COLLAPSED * pick_loss:
        warnings.append(
            f"the law's irreducible loss E is {law.E:.3g}, about 0: a fit that collapsed (runs far from "
            f"the compute-optimal frontier do not pin E down); extrapolated losses are unreliable"
        )
    if available_tokens is not None and d_pick > available_tokens:
        n_data = c_train / (6 * available_tokens)
        alt = _loss(law, n_data, available_tokens)
        warnings.append(
            f"data-constrained: D* = {human(d_pick)} tokens exceeds the {human(available_tokens)} available "
            f"({d_pick / available_tokens:.1f} epochs). Repeating data up to ~4 epochs costs little (Muennighoff et al. "
            f"2023); or train N = {human(n_data)} on one epoch" + (f" (loss {alt:.4f})" if alt is not None else "")
        )

    memory = [
        estimate_memory(shape, micro_batch, seq_len, gpus, "fsdp" if gpus > 1 else "ddp", ckpt)
        for ckpt in (False, True)
    ]
    if throughput is not None:  # a measured machine: its device, when it is a GPU of the table
        device = device_from_cuda_name(throughput.device) if throughput.device != "cpu" else None
    else:
        device = lookup_device(budget.device) if budget.device else None
    if throughput is None or device is not None:
        advice = _memory_advice(shape, seq_len, micro_batch, gpus, batch_sequences, device)
        if advice:
            warnings.append(advice)
    time = None
    if throughput is not None:  # the measured rate of the shape
        f_shape = fc.rule_6n_attention_per_token
        took = shape_tokens / throughput.tokens_per_second(pc.total, f_shape)
        time = TimeCost(
            flops=shape_tokens * f_shape,
            device=throughput.device,
            n_devices=1,
            mfu=throughput.mfu(pc.total),
            seconds=took,
            device_hours=took / 3600,
            dollars=0.0,
            price=0.0,
        )
        if seconds is None:
            budget.hours, budget.mfu = took / 3600, time.mfu
    elif budget.device:  # the shape's own FLOPs per token, not the law's 6N
        time = training_time(shape_tokens * fc.rule_6n_attention_per_token, budget.device, gpus, mfu, budget.price)
        over = time.flops / c_train - 1
        if inference is None and over > 0.005:
            warnings.append(
                f"the shape computes {over:.1%} more per token than 6N (attention): training it on "
                f"{human(shape_tokens)} tokens takes {time.seconds / 3600:,.1f} h, not the budget's "
                f"{budget.hours:,.1f} h; within the budget it trains on {human(shape_tokens / (1 + over))}"
            )
    return Allocation(
        law=law,
        law_formula=describe(law) + (f"  [{LAW_NOTES[law.name]}]" if law.name in LAW_NOTES else ""),
        counts=law.counts,
        budget=budget,
        params=n_pick,
        tokens=d_pick,
        loss=pick_loss,
        frontier=frontier,
        shape=shape,
        shape_params=pc,
        shape_tokens=shape_tokens,
        shape_loss=_loss(law, n_shape, shape_tokens),
        shape_flops_per_token={
            "6n": fc.rule_6n_per_token,
            "palm": fc.rule_6n_attention_per_token,
            "detailed": fc.training_per_token,
        },
        batch_tokens=batch,
        batch_sequences=batch_sequences,
        learning_rate=deepseek_learning_rate(c_train),
        seq_len=seq_len,
        time=time,
        memory=memory,
        inference=inference,
        target_loss=target_loss,
        warnings=warnings,
        train_flops=c_train,
        compute_optimal=_compute_optimal(law, c_train) if seconds is not None else _point(law, n_opt, d_opt),
        throughput=throughput,
        seconds=seconds,
    )


def _point(law: Law, n: float, d: float) -> dict[str, float | None]:
    return {"params": n, "tokens": d, "loss": _loss(law, n, d)}


def _compute_optimal(law: Law, flops: float) -> dict[str, float | None]:
    return _point(law, *(float(x) for x in law.optimal(flops)))


def _check_timed(flops, device, hours, gpus, dollars, target_loss, inference_tokens) -> None:
    """The options that a measured machine's budget takes: hours (wall time) or FLOPs, on it alone."""
    if (flops is None) == (hours is None):
        raise ConfigError("budget: with a throughput model give one of hours (wall time) or flops")
    for name, value in (
        ("device", device),
        ("dollars", dollars),
        ("target_loss", target_loss),
        ("inference_tokens", inference_tokens),
    ):
        if value is not None:
            raise ConfigError(f"{name}: not available with a throughput model (its machine is the device)")
    if gpus != 1:
        raise ConfigError("gpus: a throughput model is measured on one device")
    check_positive("hours", hours)
    check_positive("flops", flops)


def _least_flops(law: Law, c: float, n_opt: float, n_small: float) -> float:
    """The least budget whose compute-optimal model reaches ``n_small`` parameters, rounded up to two
    significant digits, so that the advice given is itself accepted."""
    least = c * (n_small / n_opt) ** (1 / _frontier_exponent(law))
    while float(law.optimal(least)[0]) < n_small:  # a frontier that is not a pure power law
        least *= 1.01
    step = 10.0 ** (math.floor(math.log10(least)) - 1)
    return math.ceil(least / step - 1e-9) * step


DEVICE_ROOM = 0.9  # of a device's memory usable by the estimate (CUDA context, fragmentation)


def _memory_advice(
    shape: ModelConfig, seq_len: int, micro_batch: int, gpus: int, batch_sequences: int, device
) -> str | None:
    """When a device cannot hold the training state: how many devices (FSDP) and how much gradient
    accumulation would fit it; None when it fits."""
    memory_gib = device.memory_gib if device else 80.0
    where = (
        f"the {device.name}'s {memory_gib:.0f} GiB" if device else "the 80 GiB of a large accelerator (give --device)"
    )
    limit = DEVICE_ROOM * memory_gib * GiB
    need = estimate_memory(shape, micro_batch, seq_len, gpus, "fsdp" if gpus > 1 else "ddp").total
    if need <= limit:
        return None
    n = gpus
    while n <= 1 << 20:
        for ckpt in (False, True):
            m = estimate_memory(shape, micro_batch, seq_len, n, "fsdp" if n > 1 else "ddp", ckpt)
            if m.total <= limit:
                accum = max(1, math.ceil(batch_sequences / (micro_batch * n)))
                how = (
                    f"turn on activation checkpointing ({human_bytes(m.total)} each"
                    if n == gpus
                    else f"shard with FSDP over {n} devices ({human_bytes(m.total)} each"
                    f"{' with activation checkpointing' if ckpt else ''}"
                )
                return (
                    f"memory: {human_bytes(need)} per device exceeds {where}: {how}, micro-batch {micro_batch}) "
                    f"and accumulate {accum} micro-batches per step for the batch of {batch_sequences} sequences"
                    + (f" (--gpus {n})" if n != gpus else "")
                )
        n *= 2
    return (
        f"memory: {human_bytes(need)} per device exceeds {where} on any number of devices: the activations of one "
        f"micro-batch of {micro_batch} x {seq_len} tokens do not fit; lower --micro-batch or --seq-len"
    )


def _loss(law: Law, n: float, d: float) -> float | None:
    value = law.loss(n, d)
    return None if value is None else float(value)


def _frontier_exponent(law: Law) -> float:
    """a in N_opt ~ C^a (from two budgets, so it works for every kind of law)."""
    (n1, _), (n2, _) = law.optimal(1e20), law.optimal(1e22)
    return math.log(n2 / n1) / math.log(100)


def isoflop_curve(law: Law, flops: float, params: np.ndarray) -> np.ndarray:
    """Predicted loss of models of ``params`` parameters trained with ``flops`` FLOPs (D = C / 6N)."""
    params = np.asarray(params, float)
    return np.asarray(law.loss(params, flops / (6 * params)), float)
