"""Muon for the hidden weight matrices, AdamW for the rest (``train.optimizer=muon``).

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

import torch
from torch import nn

from lmforge.errors import ConfigError


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
