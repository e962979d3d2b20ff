"""Which parameters learn during fine-tuning.

A selection sets ``requires_grad`` on every parameter; frozen ones get no gradient, so the
optimizer never touches them (they stay bitwise equal to the pretrained values).

- ``all``: everything.
- ``no-embeddings``: all but the token / position / segment embeddings (and a head tied to them).
- ``top-k:N``: the last N transformer blocks, the final norm and the head.
- ``bitfit``: biases only (Ben Zaken et al. 2022), plus the task head.
- ``lora``: the LoRA matrices (see :mod:`lmforge.finetune.lora`), plus the task head.

"The head" is what sits above the last block: a task model's classifier and pooler, or an
untied LM head. Counts are exact: each parameter once, tied weights once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lmforge.errors import ConfigError
from lmforge.finetune.lora import LORA_PARAM_NAMES, lora_modules

MODES = ("all", "no-embeddings", "top-k:N", "bitfit", "lora")
EMBEDDING_SUFFIXES = ("tok_emb.weight", "pos_emb.weight", "type_emb.weight", "shared.weight")
# Modules above the last block, by the last part of their dotted name.
HEAD_NAMES = ("classifier", "pooler", "lm_head", "norm_f")
TASK_HEAD_NAMES = ("classifier",)


@dataclass(frozen=True)
class Trainable:
    """The result of a selection: how many parameters learn, of how many."""

    mode: str
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable parameters ({self.mode}): {self.trainable:,} of {self.total:,} ({100 * self.share:.2f}%)"


def count_trainable(model: nn.Module, mode: str = "custom") -> Trainable:
    params = list(model.named_parameters())  # tied parameters once, under their first name
    return Trainable(mode, sum(p.numel() for _, p in params if p.requires_grad), sum(p.numel() for _, p in params))


def _under(name: str, module_names: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(part in module_names for part in parts[:-1])


def _block_index(name: str) -> tuple[str, int] | None:
    """('<stack>.blocks', i) for a parameter inside block i of a stack, else None."""
    m = re.search(r"^(.*?blocks)\.(\d+)\.", name)
    return (m.group(1), int(m.group(2))) if m else None


def _top_blocks(model: nn.Module, k: int) -> set[tuple[str, int]]:
    """The last k blocks of the stack nearest the output (the decoder of an encoder-decoder)."""
    stacks: dict[str, int] = {}
    for name, _ in model.named_parameters():
        b = _block_index(name)
        if b:
            stacks[b[0]] = max(stacks.get(b[0], -1), b[1])
    if not stacks:
        raise ConfigError("params: top-k needs a model with transformer blocks")
    top = next((s for s in stacks if s.endswith("decoder.blocks")), None) or next(iter(stacks))
    n = stacks[top] + 1
    if not 1 <= k <= n:
        raise ConfigError(f"params: top-k:{k} is out of range; this model has {n} blocks (use 1..{n})")
    return {(top, i) for i in range(n - k, n)}


def parse_mode(spec: str) -> tuple[str, int]:
    """'top-k:2' -> ('top-k', 2); other modes -> (mode, 0)."""
    if spec.startswith("top-k"):
        _, _, k = spec.partition(":")
        if not k.isdigit():
            raise ConfigError(f"params: {spec!r} needs a block count, e.g. top-k:2")
        return "top-k", int(k)
    if spec not in MODES:
        raise ConfigError(f"params: unknown selection {spec!r}; choose one of {', '.join(MODES)}")
    return spec, 0


def select_parameters(model: nn.Module, spec: str = "all", verbose: bool = False) -> Trainable:
    """Freeze all but the parameters that ``spec`` names; return (and optionally print) the count."""
    mode, k = parse_mode(spec)
    if mode == "lora" and not lora_modules(model):
        raise ConfigError("params: 'lora' needs LoRA adapters on the model; call apply_lora(model, ...) first")
    top = _top_blocks(model, k) if mode == "top-k" else set()
    unused = model.unused_parameters() if hasattr(model, "unused_parameters") else set()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if mode == "all":
            learn = True
        elif mode == "no-embeddings":
            learn = not name.endswith(EMBEDDING_SUFFIXES)
        elif mode == "top-k":
            learn = _block_index(name) in top or _under(name, HEAD_NAMES)
        elif mode == "bitfit":
            learn = leaf == "bias" or _under(name, TASK_HEAD_NAMES)
        else:  # lora
            learn = leaf in LORA_PARAM_NAMES or _under(name, TASK_HEAD_NAMES)
        p.requires_grad_(learn and name not in unused)
    result = count_trainable(model, spec)
    if result.trainable == 0:
        raise ConfigError(f"params: {spec!r} leaves nothing to train in this model")
    if verbose:
        print(result)
    return result
