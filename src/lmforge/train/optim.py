"""The engine's optimizers and learning-rate schedule: AdamW with two parameter groups
(:func:`param_groups`), or Muon for the hidden weight matrices and AdamW for the rest
(``train.optimizer=muon``, :func:`make_optimizers`); :func:`lr_at`, the schedule both follow.

Muon (momentum, then orthogonalised updates; Keller Jordan's optimizer of the modded-nanoGPT
speedruns) updates each 2-D weight matrix of the Transformer blocks (attention and MLP
projections, and LoRA matrices there) with the momentum's nearest semi-orthogonal matrix,
approximated by a quintic Newton-Schulz iteration. Embeddings, output heads, norm gains and biases
stay with AdamW, as Muon is meant only for hidden matrices. The two optimizers step together on
the same gradients, and a checkpoint holds both states.

``torch.optim.Muon`` (torch >= 2.9) runs the iteration in bf16, whatever the parameters' dtype:
fast on GPUs, emulated on CPUs without bf16 matrix units, and an approximation of what fp32 would
give. :class:`Float32Muon` is the same optimizer (same hyperparameters and state) with the
iteration in fp32; ``train.muon_ns_dtype=auto`` takes it everywhere but on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lmforge import device as dev
from lmforge.errors import ConfigError, TrainingError
from lmforge.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``cfg.lr``, then the schedule
    down to ``cfg.lr * cfg.min_lr_ratio``, reached at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    low = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":  # stable at the peak, then a linear decay over the last decay_fraction
        decay_start = max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps))
        if step < decay_start:
            return cfg.lr
        progress = (step - decay_start + 1) / max(1, cfg.max_steps - decay_start)
        return cfg.lr - (cfg.lr - low) * min(1.0, progress)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - 1 - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - low) * progress
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))  # cosine


def param_groups(model: nn.Module, weight_decay: float, exclude: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on matrices; none on biases, norm gains and embeddings
    (decaying those pulls them towards zero for no regularising benefit). Parameters in
    ``exclude`` (another optimizer's) are left out."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    excluded = {id(p) for p in exclude}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in excluded:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizers(model: nn.Module, cfg: TrainConfig, device: torch.device, sharded: bool):
    """(AdamW, Muon) for ``model``'s trainable parameters as ``cfg`` says: with
    ``train.optimizer=muon``, Muon takes the blocks' matrices and AdamW the rest, both stepping
    together; otherwise AdamW takes everything and Muon is None. AdamW is None when Muon takes
    every trainable parameter."""
    muon = None
    hidden = hidden_matrices(model) if cfg.optimizer == "muon" else []
    if hidden:
        if sharded:
            raise TrainingError("train.optimizer: muon needs whole matrices; FSDP shards them (use ddp)")
        ns_dtype = cfg.muon_ns_dtype
        if ns_dtype == "auto":
            ns_dtype = "bf16" if device.type == "cuda" else "fp32"
        muon = make_muon(hidden, cfg.muon_lr, cfg.weight_decay, cfg.muon_momentum, ns_dtype)
    groups = param_groups(model, cfg.weight_decay, exclude=hidden)
    adamw = None
    if groups:
        adamw = torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            fused=dev.fused_adamw_ok(device) and not sharded,
        )
    return adamw, muon


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The trainable 2-D parameters inside the Transformer blocks (Muon's share), in model order."""
    from lmforge.nn import Block

    inside = {id(p) for m in model.modules() if isinstance(m, Block) for p in m.parameters()}
    return [p for p in model.parameters() if p.requires_grad and p.ndim == 2 and id(p) in inside]


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """An approximation of U V^T for G = U S V^T, in fp32: G scaled to spectral norm <= 1 (by its
    Frobenius norm), then ``steps`` rounds of X <- a X + (b A + c A^2) X with A = X X^T on the wide
    orientation (the smaller Gram matrix). Muon's coefficients push the singular values towards 1
    fast rather than exactly (those far below 1 stay lower): the optimizer wants speed, not precision."""
    a, b, c = coefficients
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.mT
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def _lr_ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """torch.optim.Muon's learning-rate adjustment of a (rows, cols) matrix."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


if hasattr(torch.optim, "Muon"):

    class Float32Muon(torch.optim.Muon):
        """``torch.optim.Muon`` with the Newton-Schulz iteration in fp32 (see the module docstring);
        the update is otherwise the same: momentum buffer m <- mu m + (1 - mu) g, Nesterov
        direction g + mu (m - g) (or m), decoupled weight decay p <- p (1 - lr wd), then
        p <- p - lr * ratio(shape) * orth(direction)."""

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                lr, wd, mu = float(group["lr"]), group["weight_decay"], group["momentum"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
                    buf = state["momentum_buffer"]
                    buf.lerp_(g, 1 - mu)
                    direction = g.lerp(buf, mu) if group["nesterov"] else buf
                    update = orthogonalize(direction, group["ns_coefficients"], group["ns_steps"], group["eps"])
                    p.mul_(1 - lr * wd)
                    p.add_(update.to(p.dtype), alpha=-lr * _lr_ratio(p.shape, group["adjust_lr_fn"]))
            return loss


def make_muon(params: list[nn.Parameter], lr: float, weight_decay: float, momentum: float, ns_dtype: str):
    """The Muon optimizer of ``params``: :class:`Float32Muon` (``ns_dtype="fp32"``) or
    ``torch.optim.Muon`` itself (``"bf16"``)."""
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(
            f"train.optimizer: muon needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}"
        )
    cls = Float32Muon if ns_dtype == "fp32" else torch.optim.Muon
    return cls(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
