"""The two other questions the planner answers beside compute-optimal allocation.

* inference-aware (Sardana et al. 2024): minimise 6 N D_train + 2 N D_inference subject to
  L(N, D_train) = a target loss (:func:`inference_optimal`);
* time-optimal: minimise L(N, D) subject to D / tokens_per_second(N) <= T on a measured machine
  (:func:`time_optimal`, with :func:`rate_of_size` interpolating the machine's throughput).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from lmforge.accounting import count_flops, count_params
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.plan.budget import check_positive
from lmforge.plan.laws import Law, ParametricLaw, load_law
from lmforge.plan.shapes import shape_for
from lmforge.plan.throughput import Throughput

# ---------------------------------------------------------------------------------------------
# inference-aware allocation (Sardana et al. 2024)
# ---------------------------------------------------------------------------------------------


@dataclass
class InferenceAware:
    """The model that reaches ``target_loss`` at the lowest training + inference cost."""

    target_loss: float
    inference_tokens: float
    params: float
    train_tokens: float
    train_flops: float
    inference_flops: float
    # the compute-optimal model with the same loss, for comparison
    chinchilla_params: float
    chinchilla_tokens: float
    chinchilla_total_flops: float

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.inference_flops

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_flops": self.total_flops}


def as_parametric(law: Law, what: str) -> ParametricLaw:
    if not isinstance(law, ParametricLaw):
        raise ConfigError(
            f"{what} needs a law with a loss model L(N, D) (chinchilla, epoch, sardana or an "
            f"approach-3 fit); {law.name!r} only knows the frontier"
        )
    return law


def inference_optimal(law: Law | str, target_loss: float, inference_tokens: float) -> InferenceAware:
    """Minimise 6 N D_train + 2 N D_inference subject to L(N, D_train) = ``target_loss``."""
    law = as_parametric(load_law(law), "inference-aware allocation")
    if inference_tokens < 0 or not math.isfinite(inference_tokens):
        raise ConfigError(f"inference_tokens: must be >= 0, got {inference_tokens}")
    headroom = target_loss - law.E
    if not headroom > 0:
        law.compute_for_loss(target_loss)  # raises the explanatory error

    def tokens(n: float) -> float:  # D_train that reaches the target with N parameters
        return (law.B / (headroom - law.A * n**-law.alpha)) ** (1 / law.beta)

    def stationarity(log_n: float) -> float:
        # d/dN [N (6 D(N) + 2 D_inf)] / D(N), written with u = A N^-alpha to stay finite
        n = math.exp(log_n)
        u = law.A * n**-law.alpha
        return 6 + 2 * inference_tokens / tokens(n) - 6 * law.alpha / law.beta * u / (headroom - u)

    log_n_min = math.log(law.A / headroom) / law.alpha  # below this N no amount of data reaches the target
    lo, hi = log_n_min + 1e-12, log_n_min + 1.0
    while stationarity(hi) < 0:
        hi += 1.0
    n = math.exp(brentq(stationarity, lo, hi, xtol=1e-14, rtol=1e-14))
    d = tokens(n)
    c = law.compute_for_loss(target_loss)
    n_c, d_c = law.optimal(c)
    return InferenceAware(
        target_loss=target_loss,
        inference_tokens=inference_tokens,
        params=n,
        train_tokens=d,
        train_flops=6 * n * d,
        inference_flops=2 * n * inference_tokens,
        chinchilla_params=n_c,
        chinchilla_tokens=d_c,
        chinchilla_total_flops=6 * n_c * d_c + 2 * n_c * inference_tokens,
    )


# ---------------------------------------------------------------------------------------------
# time-optimal allocation: a wall-time budget on a machine of measured throughput
# ---------------------------------------------------------------------------------------------


def time_optimal(
    law: Law | str,
    seconds: float,
    tokens_per_second,
    n_min: float,
    n_max: float,
    points_per_decade: int = 24,
) -> tuple[float, float]:
    """(N, D) minimising L(N, D) subject to D / tokens_per_second(N) <= ``seconds``, N in [n_min, n_max].

    The constraint binds, so D(N) = T r(N), r the tokens/s of a model of N parameters, and the
    problem is one-dimensional: a grid in log N, then Brent's method in the best grid interval.

    Which way the answer moves: with r(N) = P m(N) / f(N) (peak P, MFU m, training FLOPs per
    token f), d log D / d log N = gamma - 1 - phi, where gamma = d log m / d log N and
    phi = d log(f / N) / d log N (0 for f = 6N). The optimum of L = E + A/N^alpha + B/D^beta then has

        alpha A N^-alpha = (1 - gamma + phi) beta B D^-beta.

    With a constant MFU and f = 6N this is the compute-optimal condition on the line 6ND = C, C = T P m:
    the FLOP-optimal answer. When small models run at lower MFU (gamma > 0), alpha A N^-alpha is
    below beta B D^-beta at the optimum; on the IsoFLOP line through it, alpha A N^-alpha - beta B
    (C / 6N)^-beta falls as N grows and is zero at the compute-optimal size, so the time-optimal
    model is *larger* (fewer tokens per parameter) than the compute-optimal model of the FLOPs it
    trains with. Buying a larger model costs fewer tokens than the FLOPs alone say, because it
    runs at a higher utilisation.
    """
    law = load_law(law)
    if law.loss(1.0, 1.0) is None:
        raise ConfigError(
            f"a time budget needs a law with a loss model L(N, D) to trade size against tokens; {law.name!r} "
            "only knows the compute-optimal frontier"
        )
    check_positive("seconds", seconds)
    if not 0 < n_min < n_max:
        raise ConfigError(f"time_optimal: need 0 < n_min < n_max, got {n_min:g}, {n_max:g}")

    def objective(log_n: float) -> float:
        n = math.exp(log_n)
        return float(law.loss(n, seconds * tokens_per_second(n)))

    lo, hi = math.log(n_min), math.log(n_max)
    grid = np.linspace(lo, hi, max(3, math.ceil((hi - lo) / math.log(10) * points_per_decade) + 1))
    values = np.array([objective(x) for x in grid])
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(objective, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
    log_n = float(res.x) if res.fun <= values[i] else float(grid[i])
    n = math.exp(log_n)
    return n, seconds * float(tokens_per_second(n))


def rate_of_size(
    throughput: Throughput,
    template: ModelConfig,
    counts: str,
    aspect: tuple[float, float],
    head_dim: int | None,
    seq_len: int,
    n_min: float,
    n_max: float,
):
    """N -> tokens/s of the planner's shape of N parameters (the law's count) on the measured machine.

    The shapes' total parameters (what MFU is tabulated against) and FLOPs per token (6N +
    attention) per counted parameter are taken from concrete shapes along the range and
    interpolated in log N, so the rate is a smooth function of N for the optimiser.
    """
    grid = np.geomspace(n_min, n_max, max(4, math.ceil(math.log10(n_max / n_min) * 8) + 1))
    rows = {}
    for target in grid:
        shape = shape_for(float(target), template, counts, aspect, head_dim)
        pc = count_params(shape)
        n = pc.total if counts == "total" else pc.non_embedding
        rows[n] = (pc.total / n, count_flops(shape, seq_len).rule_6n_attention_per_token / n)
    xs = np.log(sorted(rows))
    total_per_n = np.array([rows[k][0] for k in sorted(rows)])
    flops_per_n = np.array([rows[k][1] for k in sorted(rows)])

    def total(n: float) -> float:
        return n * float(np.interp(math.log(n), xs, total_per_n))

    def rate(n: float) -> float:
        return throughput.tokens_per_second(total(n), n * float(np.interp(math.log(n), xs, flops_per_n)))

    rate.total = total  # the total parameters of the size-N shape, for its MFU
    return rate
