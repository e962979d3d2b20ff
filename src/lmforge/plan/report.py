"""One report per model: parameters, FLOPs, training memory and time (what ``lmforge plan --model``
prints), assembled from :mod:`lmforge.accounting` and :mod:`lmforge.hardware`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.accounting import (
    FlopCount,
    MemoryEstimate,
    ParamCount,
    count_flops,
    count_params,
    estimate_memory,
    human,
    human_bytes,
)
from lmforge.config import ModelConfig
from lmforge.hardware import TimeCost, training_time


@dataclass
class ModelReport:
    """Parameters, FLOPs, memory per device and (given tokens and a device) time and cost of a model."""

    config: ModelConfig
    params: ParamCount
    flops: FlopCount
    memory: list[MemoryEstimate]
    tokens: float | None = None
    time: TimeCost | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "params": self.params.to_dict(),
            "flops": self.flops.to_dict(),
            "memory": [m.to_dict() for m in self.memory],
            "tokens": self.tokens,
            "time": self.time.to_dict() if self.time else None,
        }

    def summary(self) -> str:
        p, f, cfg = self.params, self.flops, self.config
        lines = [
            f"model: {cfg.arch}, {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads"
            f" ({cfg.kv_heads} kv), ffn {cfg.ffn_dim} {cfg.activation}, vocab {cfg.vocab_size}",
            f"parameters: {p.total:,} total, {p.non_embedding:,} non-embedding, {p.embedding:,} embedding",
            *[f"  {k:<28} {v:>16,}" for k, v in p.breakdown.items()],
            f"training FLOPs per token (sequence of {f.tokens}):",
            f"  detailed (Chinchilla App. F)  {f.training_per_token:.4g}",
            f"  6N                            {f.rule_6n_per_token:.4g}   (N = {p.compute:,} compute parameters)",
            f"  6N + 12 L T d (PaLM)          {f.rule_6n_attention_per_token:.4g}",
            f"  detailed / 6N                 {f.training_per_token / f.rule_6n_per_token:.3f}",
            "memory per device (AdamW, fp32 master weights; activations of one micro-batch):",
        ]
        for m in self.memory:
            ckpt = "checkpointing" if m.checkpointing else "no checkpointing"
            lines.append(
                f"  {m.strategy} x{m.world_size}, batch {m.micro_batch}, {ckpt:<16} "
                f" {human_bytes(m.total):>11}"
                f"  (states {human_bytes(m.weights + m.gradients + m.optimizer)},"
                f" activations {human_bytes(m.activations)})"
            )
        if self.time:
            t = self.time
            lines.append(
                f"training on {human(self.tokens)} tokens = {t.flops:.3g} FLOPs: {t.n_devices} x "
                f"{t.device} at MFU {t.mfu:.0%}: {t.seconds / 3600:,.1f} h ({t.days:,.2f} days), "
                f"{t.device_hours:,.0f} device-hours, ${t.dollars:,.0f} at ${t.price:.2f}/h"
            )
        return "\n".join(lines)


def account(
    cfg: ModelConfig,
    seq_len: int | None = None,
    micro_batch: int = 1,
    world_size: int = 1,
    tokens: float | None = None,
    device: str | None = None,
    mfu: float = 0.4,
    price: float | None = None,
    precision: str = "bf16",
) -> ModelReport:
    """Everything accounting knows about ``cfg``; memory under DDP and FSDP, with and without checkpointing."""
    flops = count_flops(cfg, seq_len)
    memory = [
        estimate_memory(cfg, micro_batch, seq_len, world_size, strategy, ckpt, precision)
        for strategy in ("ddp", "fsdp")
        for ckpt in (False, True)
    ]
    time_cost = None
    if tokens is not None and device is not None:
        time_cost = training_time(tokens * flops.training_per_token, device, world_size, mfu, price)
    return ModelReport(cfg, count_params(cfg), flops, memory, tokens, time_cost)
