"""XLNet's permutation language modelling objective (``plm``) as a resumable sampler.

Each example is a window of ``seq_len`` packed tokens (documents separated by EOS, as for the
causal objective) and a random factorisation order z of its positions. Only the last 1/K of the
order is predicted (partial prediction, K = 6 as in the paper): with c = T - n, the targets are
z_{c+1} .. z_T. Every position sees exactly the positions before it in the order, as in the
paper's two-stream equations, so that the scores of :func:`lmforge.models.xlnet.order_logprobs`
(the chain rule along an order, in one forward) are computed as in training. (XLNet's released
input pipeline lets the c context positions also see one another, which the chain rule along an
order does not.) The model is never given an order; it gets the masks HF's ``XLNetLMHeadModel``
consumes:

=================  ==========  =============================================================
key                shape       meaning
=================  ==========  =============================================================
input_ids          (T,)        the window, unchanged (the query stream never reads a target)
perm_mask          (T, T)      1 where position i may not see position j
target_mapping     (P, T)      one-hot rows: the positions predicted, in the order's sequence;
                               rows past the n used ones are zero
labels             (P,)        the token of each prediction, -100 on the unused rows
=================  ==========  =============================================================

n is T / K rounded at random (up with the probability of its fractional part), so the predicted
share is 1/K in expectation for any T; it is at least 1 and at most T - 1, and P = ceil(T / K).
Randomness and resuming are the base class's: example i draws from ``default_rng([seed, i])``.
"""

from __future__ import annotations

import math

import numpy as np

from lmforge.data.sampler import IGNORE_INDEX, Sampler
from lmforge.errors import ConfigError

PLM_K = 6.0  # predict the last 1/K of each order (XLNet: K = 6 for the base models)


def prediction_count(length: int, k: float, rng: np.random.Generator) -> int:
    """How many of ``length`` positions to predict: length / k, rounded up with the probability of
    its fractional part (so its mean is length / k), kept in [1, length - 1]."""
    share = length / k
    n = math.floor(share) + int(rng.random() < share - math.floor(share))
    return min(max(n, 1), length - 1)


def permutation_masks(order: np.ndarray, n_predict: int) -> tuple[np.ndarray, np.ndarray]:
    """perm_mask (T, T), 1 where i may not see j, and the predicted positions (n_predict,) of a
    factorisation ``order`` (a permutation of the positions) whose last ``n_predict`` are targets.

    Position j is hidden from i when j does not come before i in the order (the query stream never
    sees its own position; the content stream adds it back)."""
    T = len(order)
    rank = np.empty(T, dtype=np.int64)
    rank[order] = np.arange(T)
    perm_mask = rank[None, :] >= rank[:, None]
    return perm_mask.astype(np.int64), order[T - n_predict :]


class PermutationSampler(Sampler):
    """Permutation-LM examples over packed windows (see the module docstring)."""

    objective = "plm"

    def __init__(self, tokens, offsets, tokenizer, batch_size, seq_len, *, plm_k: float = PLM_K, **kw):
        super().__init__(tokens, offsets, tokenizer, batch_size, seq_len, **kw)
        if not plm_k > 1:
            raise ConfigError(f"plm_k: must be greater than 1 (predict the last 1/K of each order), got {plm_k}")
        if seq_len < 2:
            raise ConfigError(f"seq_len: the permutation objective needs at least 2 positions, got {seq_len}")
        self.k = float(plm_k)
        self.window = seq_len
        self._check_length()
        self.n_rows = min(math.ceil(seq_len / self.k), seq_len - 1)  # P: rows of target_mapping

    def _example(self, index, rng):
        ids = self._window(index, rng)
        T = len(ids)
        order = rng.permutation(T)
        n = prediction_count(T, self.k, rng)
        perm_mask, targets = permutation_masks(order, n)
        target_mapping = np.zeros((self.n_rows, T), dtype=np.int64)
        target_mapping[np.arange(n), targets] = 1
        labels = np.full(self.n_rows, IGNORE_INDEX, dtype=np.int64)
        labels[:n] = ids[targets]
        return {"input_ids": ids, "perm_mask": perm_mask, "target_mapping": target_mapping, "labels": labels}
