"""The sampler every objective builds on, and the causal LM's.

Conventions. Labels are *already aligned with the logits*: the loss is cross-entropy of
``logits[:, t]`` against ``labels[:, t]`` with no further shift, and ``-100`` is ignored. For the
causal objective this means labels are the inputs shifted left by one (nanoGPT style); for the
encoder-decoder objectives ``decoder_input_ids`` are the labels shifted right behind
``decoder_start_id`` (default: the pad id, as in T5). Documents are packed back to back,
separated by EOS.

Randomness and resuming. Example ``i`` of the run (counting across batches) draws everything from
its own generator ``np.random.default_rng([seed, i])``, never from global state. A sampler's
position is therefore just ``step``: ``state_dict()`` / ``load_state_dict()`` resume exactly,
and with ``world_size`` ranks, rank ``r`` builds rows ``[r*B/w, (r+1)*B/w)`` of the very global
batch a single process would draw, so data-parallel runs see the same data as single-process ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lmforge.errors import ConfigError
from lmforge.tokenizer import Tokenizer, special_id

IGNORE_INDEX = -100
ORDERS = ("random", "sequential")


class Sampler:
    """Base class: turns example indices into batches, owns the position and rank slicing.

    ``order="random"`` draws windows uniformly with replacement; ``"sequential"`` walks
    non-overlapping windows from the start (epoch after epoch), e.g. for evaluation.
    Subclasses set ``window`` (tokens consumed per example) and implement ``_example``.
    """

    objective = ""
    window = 0  # tokens of the stream one example reads
    stride = 0  # distance between sequential windows (== window unless windows overlap)
    orders = ORDERS

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        tokenizer: Tokenizer,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        order: str = "random",
    ):
        if batch_size <= 0 or seq_len <= 0:
            raise ConfigError(f"batch_size / seq_len: must be positive, got {batch_size} / {seq_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank: {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ConfigError(
                f"batch_size: {batch_size} is not divisible by world_size={world_size}; use a multiple of {world_size}"
            )
        if order not in self.orders:
            raise ConfigError(
                f"order: {order!r} is not one of {', '.join(self.orders)} for objective {self.objective!r}"
            )
        self.tokens = np.asarray(tokens)  # a plain view of the memmap: slicing it is much cheaper
        self.offsets = np.asarray(offsets)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.order = order
        self.step = 0

    def _check_length(self) -> None:
        """Call once ``window`` is known: the split must hold at least one example."""
        self.stride = self.stride or self.window
        if self.window <= 0 or len(self.tokens) < self.window:
            raise ConfigError(
                f"seq_len: {self.seq_len} needs {self.window} tokens per example but the split has "
                f"{len(self.tokens)}; use a shorter seq_len or more data"
            )

    # ---- position ---------------------------------------------------------------------------
    @property
    def windows_per_epoch(self) -> int:
        return max(1, (len(self.tokens) - self.window) // self.stride + 1)

    @property
    def batches_per_epoch(self) -> int:
        """Whole global batches per pass over the split (the last partial one is not counted)."""
        return max(1, self.windows_per_epoch // self.batch_size)

    @property
    def epoch(self) -> int:
        return self.step * self.batch_size // self.windows_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """The position: enough to resume exactly (``epoch`` / ``offset`` are informative)."""
        examples = self.step * self.batch_size
        return {
            "objective": self.objective,
            "seed": self.seed,
            "step": self.step,
            "epoch": self.epoch,
            "offset": examples % self.windows_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("objective") != self.objective:
            raise ConfigError(
                f"objective: the saved data position is for {state.get('objective')!r}, not {self.objective!r}"
            )
        self.seed = int(state["seed"])
        self.step = int(state["step"])

    # ---- batches ----------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's rows of the next global batch, as int64 tensors."""
        local = self.batch_size // self.world_size
        first = self.step * self.batch_size + self.rank * local
        rows = [self._example(i, np.random.default_rng([self.seed, i])) for i in range(first, first + local)]
        self.step += 1
        return {k: torch.from_numpy(np.stack([r[k] for r in rows]).astype(np.int64)) for k in rows[0]}

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _window(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The ``window`` stream tokens of example ``index``."""
        if self.order == "random":
            start = int(rng.integers(0, len(self.tokens) - self.window + 1))
        else:
            start = index % self.windows_per_epoch * self.stride
        return np.asarray(self.tokens[start : start + self.window], dtype=np.int64)

    def _example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError


def token_array(token_id: int | None) -> np.ndarray:
    """A special token as a 0- or 1-element id array (absent tokens are simply left out)."""
    return np.array([] if token_id is None else [token_id], dtype=np.int64)


def pad_to(ids: np.ndarray, length: int, value: int) -> np.ndarray:
    return np.concatenate([ids, np.full(length - len(ids), value, dtype=np.int64)])


def require_tokens(tokenizer: Tokenizer, objective: str, *roles: str) -> None:
    missing = [r for r in roles if special_id(tokenizer, r) is None]
    if missing:
        raise ConfigError(
            f"objective: {objective!r} needs the special token(s) {', '.join(missing)}, which this "
            f"{tokenizer.kind} tokenizer lacks; train one with lmforge tokenizer train"
        )


# ---- causal LM ------------------------------------------------------------------------------------
class CausalSampler(Sampler):
    """Packed windows for next-token prediction: ``labels[t] == input_ids[t + 1]`` of the stream.

    ``doc_mask=True`` adds ``document_ids``: the document of each input position, counting the EOS
    separators before it and at it (an EOS opens the next document, as a scored or generated text
    starts after one), so that the model's attention does not cross a document boundary
    (:func:`lmforge.nn.document_ids_from_separators` computes the same from ``input_ids``).
    """

    objective = "causal"

    def __init__(self, tokens, offsets, tokenizer, batch_size, seq_len, doc_mask: bool = False, **kw):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        self.window, self.stride = seq_len + 1, seq_len  # sequential windows overlap by the one label token
        self._check_length()
        self.doc_mask = bool(doc_mask)
        if self.doc_mask:
            require_tokens(tokenizer, "causal with doc_mask", "eos")

    def _example(self, index, rng):
        w = self._window(index, rng)
        example = {"input_ids": w[:-1], "labels": w[1:]}
        if self.doc_mask:
            example["document_ids"] = np.cumsum(w[:-1] == self.tokenizer.eos_id)
        return example
