"""Fit scaling laws to training runs: the three approaches of Hoffmann et al. 2022 (Chinchilla).

Input: a runs table with columns ``params,tokens,loss`` (optional ``flops``; ``tokens`` may be left
out when ``flops`` is given: tokens = flops / (6 params)), one row per finished run. Loss curves
(several rows per run, with ``run`` and ``step`` columns) feed Approach 1; Approaches 2 and 3 then
use each run's last row, since mid-schedule losses of a cosine schedule are not those of a run of
that length.

* Approach 3 (:func:`fit_parametric`): L(N, D) = E + A/N^alpha + B/D^beta by minimising
  sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i), delta = 1e-3, with
  L-BFGS. Chinchilla starts L-BFGS from every point of a 4,500-point grid; here the objective is
  evaluated on the whole grid at once and only the best ``top_k`` starts are refined, which
  reaches the same optimum (see ``lmforge bench --cases fit``); ``top_k=None`` refines all.
* Approach 2 (:func:`fit_isoflop`): a parabola in log N per compute budget, its minimum, then
  N_opt = k C^a.
* Approach 1 (:func:`fit_envelope`): the lower envelope of the loss curves over FLOPs; at each FLOP
  count the run with the lowest loss gives N_opt, then N_opt = k C^a.

Every fitted quantity gets a bootstrap interval (resampling runs with replacement, seeded).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from lmforge.errors import ConfigError, DataError
from lmforge.plan.laws import Law, ParametricLaw, PowerLawFrontier, describe
from lmforge.plan.runs import Runs, load_runs

HUBER_DELTA = 1e-3
# Chinchilla's initialisation grid: 5 * 5 * 5 * 6 * 6 = 4,500 starts, columns (a, b, e, alpha, beta)
GRID_AXES = {
    "a": np.arange(0.0, 26.0, 5.0),
    "b": np.arange(0.0, 26.0, 5.0),
    "e": np.arange(-1.0, 1.01, 0.5),
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
}
PARAMETRIC_NAMES = ("E", "A", "B", "alpha", "beta")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """A fitted law with its estimates, bootstrap intervals and per-approach details."""

    approach: int
    law: Law
    estimates: dict[str, float]
    ci: dict[str, list[float]]
    objective: float  # Huber sum (Approach 3) or residual sum of squares of the log-log fit (1, 2)
    n_points: int
    seconds: float
    bootstrap: int = 0
    details: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    runs: Runs | None = field(default=None, repr=False)
    samples: list[dict[str, float]] = field(default_factory=list, repr=False)  # the bootstrap estimates

    def to_dict(self) -> dict[str, Any]:
        return {
            "approach": self.approach,
            "law": self.law.to_dict(),
            "estimates": self.estimates,
            "ci": self.ci,
            "objective": self.objective,
            "n_points": self.n_points,
            "seconds": self.seconds,
            "bootstrap": self.bootstrap,
            "details": self.details,
            "warnings": self.warnings,
        }

    def save(self, path: str | Path) -> None:
        """Write JSON that ``lmforge plan --law PATH`` (and :func:`~lmforge.plan.laws.load_law`) reads
        (missing parent directories are created)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise DataError(f"{path}: cannot write the fitted law ({e.strerror or e})") from None

    def summary(self) -> str:
        what = {3: "parametric L(N, D), Huber sum", 2: "IsoFLOP parabolas", 1: "loss-curve envelope"}
        lines = [
            f"Approach {self.approach} ({what[self.approach]}): {self.n_points} points, {self.seconds:.2f} s",
            f"  {describe(self.law)}",
        ]
        for name, value in self.estimates.items():
            interval = self.ci.get(name)
            ci = f"   [{interval[0]:.5g}, {interval[1]:.5g}]" if interval else ""
            lines.append(f"  {name:>8} = {value:.6g}{ci}")
        lines.append(f"  objective = {self.objective:.6g}")
        if self.bootstrap:
            lines.append(f"  (intervals: 95% bootstrap percentiles over {self.bootstrap} resamples)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _intervals(samples: list[dict[str, float]], level: float) -> dict[str, list[float]]:
    if not samples:
        return {}
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return {
        k: [float(np.percentile([s[k] for s in samples], lo)), float(np.percentile([s[k] for s in samples], hi))]
        for k in samples[0]
    }


def _bootstrap(
    estimate: Callable[[np.random.Generator], dict[str, float] | None], n: int, seed: int
) -> tuple[list[dict[str, float]], int]:
    """Run ``estimate`` on ``n`` resamples; returns the estimates and how many resamples failed."""
    rng = np.random.default_rng(seed)
    out, failed = [], 0
    for _ in range(n):
        try:
            est = estimate(rng)
        except (DataError, ConfigError, FloatingPointError):
            est = None
        if est is None:
            failed += 1
        else:
            out.append(est)
    return out, failed


# ---------------------------------------------------------------------------------------------
# Approach 3: the parametric fit
# ---------------------------------------------------------------------------------------------


def huber_objective(
    theta: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    delta: float = HUBER_DELTA,
    grad: bool = False,
):
    """Huber sum at ``theta`` = (a, b, e, alpha, beta), or at each row of an (S, 5) array at once.

    The residual is LSE(a - alpha log N, b - beta log D, e) - log L, the predicted log loss minus
    the observed one. With ``grad`` also returns the analytic gradient (same shape as theta).
    """
    theta = np.asarray(theta, dtype=float)
    cols = theta[..., None]  # (5, 1) or (S, 5, 1): broadcasts against the points
    a, b, e, alpha, beta = (cols[..., i, :] for i in range(5))
    t1, t2 = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t1, t2), e)
    w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = w1 + w2 + w3
    r = top + np.log(total) - log_l
    abs_r = np.abs(r)
    value = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum(axis=-1)
    if not grad:
        return value
    dr = np.clip(r, -delta, delta) / total  # d Huber / d r, over the softmax denominator
    g1, g2, g3 = dr * w1, dr * w2, dr * w3  # d Huber / d (a, b, e) per point
    g = np.stack([g1.sum(-1), g2.sum(-1), g3.sum(-1), -(g1 * log_n).sum(-1), -(g2 * log_d).sum(-1)], axis=-1)
    return value, g


def grid_starts() -> np.ndarray:
    """Chinchilla's 4,500 initial points as rows (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(*GRID_AXES.values())))


@dataclass
class _Refined:
    theta: np.ndarray
    value: float
    status: int  # scipy's: 0 converged, 1 iteration limit, 2 line search stopped (at machine precision)
    message: str


def _refine(start: np.ndarray, data: tuple[np.ndarray, ...], max_iter: int) -> _Refined:
    fun = lambda th: huber_objective(th, *data, grad=True)  # noqa: E731
    res = minimize(
        fun,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "maxfun": 4 * max_iter, "ftol": 1e-15, "gtol": 1e-12},
    )
    return _Refined(res.x, float(res.fun), int(res.status), str(res.message))


def _one_blas_thread():
    """L-BFGS-B calls BLAS on tiny matrices; a multi-threaded OpenBLAS makes that ~8x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the fit is slower, not different
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _best_of(starts: np.ndarray, data: tuple[np.ndarray, ...], max_iter: int) -> _Refined:
    best = None
    with _one_blas_thread():
        for s in starts:
            r = _refine(s, data, max_iter)
            if np.isfinite(r.value) and (best is None or r.value < best.value):
                best = r
    if best is None:
        raise DataError("approach 3: the objective is not finite at any start; check the runs for extreme values")
    return best


def _rank_starts(starts: np.ndarray, data: tuple[np.ndarray, ...], chunk_elements: int = 2**20) -> np.ndarray:
    """``starts`` sorted by their objective, evaluated in chunks to bound memory."""
    step = max(1, chunk_elements // len(data[0]))
    values = np.concatenate([huber_objective(starts[i : i + step], *data) for i in range(0, len(starts), step)])
    return starts[np.argsort(values, kind="stable")]


E_COLLAPSED = 0.05  # a fitted E below this share of the lowest loss: the fit let E run to 0


def _parametric_estimates(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(x) for x in theta)
    if max(a, b, e) > 700:  # exp would overflow: the optimum ran off to infinity
        raise DataError(
            f"approach 3 diverged (log A {a:.3g}, log B {b:.3g}, log E {e:.3g}): these runs do not "
            "pin the law down; add runs at more budgets and sizes"
        )
    E, A, B = math.exp(e), math.exp(a), math.exp(b)
    out = {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta}
    if alpha > 0 and beta > 0:  # the frontier exponents and G exist
        law = ParametricLaw("fit", E, A, B, alpha, beta)
        out.update(a=law.a, b=law.b, G=law.G)
    return out


def fit_parametric(
    runs: Runs,
    top_k: int | None = 32,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    max_iter: int = 2000,
    starts: np.ndarray | None = None,
    name: str = "fit",
) -> FitResult:
    """Approach 3: Chinchilla's Huber / L-BFGS fit of L(N, D) = E + A/N^alpha + B/D^beta.

    ``starts`` defaults to Chinchilla's grid (:func:`grid_starts`); only the ``top_k`` starts with
    the lowest objective are refined (``None``: all, the plain multi-start method).
    """
    t0 = time.perf_counter()
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k: must be at least 1 (or None for every start), got {top_k}")
    runs = runs.final()
    if len(runs) < 5:
        raise DataError(f"{runs.source}: approach 3 fits 5 parameters and needs at least 5 runs, got {len(runs)}")
    if len(np.unique(runs.params)) < 2 or len(np.unique(runs.tokens)) < 2:
        raise DataError(f"{runs.source}: approach 3 needs runs that differ in both params and tokens")
    data = (np.log(runs.params), np.log(runs.tokens), np.log(runs.loss))
    ranked = _rank_starts(grid_starts() if starts is None else np.atleast_2d(starts), data)
    best = _best_of(ranked[:top_k], data, max_iter)
    if best.status == 1:  # iteration limit: a genuine failure to converge
        raise DataError(
            f"{runs.source}: approach 3 did not converge in {max_iter} L-BFGS iterations "
            f"({best.message}); raise max_iter or check the data"
        )
    est = _parametric_estimates(best.theta)
    if not (est["alpha"] > 0 and est["beta"] > 0):
        raise DataError(
            f"{runs.source}: the fit gives alpha={est['alpha']:.3g}, beta={est['beta']:.3g}; loss must "
            "fall with both params and tokens for a compute-optimal frontier - add runs that vary both"
        )
    law = ParametricLaw(name, *(est[k] for k in PARAMETRIC_NAMES))

    def resample(rng: np.random.Generator) -> dict[str, float] | None:
        idx = rng.integers(0, len(runs), len(runs))
        sub = tuple(x[idx] for x in data)
        # warm start from the full-data optimum, plus the two best of the refined starts on the resample
        cand = np.vstack([best.theta, _rank_starts(ranked[:top_k], sub)[:2]])
        est_b = _parametric_estimates(_best_of(cand, sub, max_iter).theta)
        return est_b if "a" in est_b else None

    samples, failed = _bootstrap(resample, bootstrap, seed)
    warnings = [f"{failed} of {bootstrap} bootstrap fits failed and were left out"] if failed else []
    if est["E"] < E_COLLAPSED * float(runs.loss.min()):
        warnings.append(
            f"the irreducible loss E collapsed to {est['E']:.3g} (about 0): these runs do not pin it down "
            "(e.g. runs far over-trained, away from the compute-optimal frontier, as in Sardana et al.); "
            "the law's extrapolations are unreliable: add runs near the frontier at more budgets"
        )
    return FitResult(
        approach=3,
        law=law,
        estimates=est,
        ci=_intervals(samples, level),
        objective=best.value,
        n_points=len(runs),
        seconds=time.perf_counter() - t0,
        bootstrap=bootstrap,
        warnings=warnings,
        runs=runs,
        samples=samples,
    )


# ---------------------------------------------------------------------------------------------
# Approaches 2 and 1: frontiers
# ---------------------------------------------------------------------------------------------


def _frontier_estimates(rows: list[dict[str, float]], name: str) -> tuple[PowerLawFrontier, dict, float]:
    """N_opt = k C^a through the (flops, n_opt) of ``rows``; estimates and the residual sum of squares."""
    flops, n_opt = np.array([r["flops"] for r in rows]), np.array([r["n_opt"] for r in rows])
    law = PowerLawFrontier.from_points(name, flops, n_opt)
    resid = np.log(n_opt) - np.log(law.k) - law.a * np.log(flops)
    est = {"a": law.a, "b": law.b, "k": law.k, "k_D": 1 / (6 * law.k)}  # D_opt = C / (6 N_opt) = k_D C^b
    return law, est, float(np.sum(resid**2))


def group_budgets(flops: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
    """Group labels for compute budgets: runs within ``tolerance`` (relative) of a group's smallest budget."""
    order = np.argsort(flops)
    labels = np.empty(len(flops), dtype=int)
    group, start = -1, -math.inf
    for i in order:
        if math.log(flops[i]) - start > math.log1p(tolerance):
            group, start = group + 1, math.log(flops[i])
        labels[i] = group
    return labels


def _isoflop_minima(runs: Runs, labels: np.ndarray) -> tuple[list[dict[str, float]], list[str]]:
    """Per budget: the parabola in log N, its minimum and whether it lies inside the sampled sizes."""
    rows, warnings = [], []
    for g in np.unique(labels):
        sel = labels == g
        c = float(np.exp(np.mean(np.log(runs.flops[sel]))))
        x, y = np.log(runs.params[sel]), runs.loss[sel]
        if len(np.unique(x)) < 3:
            warnings.append(f"budget {c:.3g} FLOPs has {len(np.unique(x))} model sizes (3 needed); skipped")
            continue
        c2, c1, c0 = np.polyfit(x, y, 2)
        if c2 <= 0:
            warnings.append(f"budget {c:.3g} FLOPs: loss is not convex in log N; skipped")
            continue
        x_opt = -c1 / (2 * c2)
        inside = bool(x.min() <= x_opt <= x.max())
        if not inside:
            warnings.append(f"budget {c:.3g} FLOPs: the minimum lies outside the sampled model sizes (extrapolated)")
        n_opt = float(np.exp(x_opt))
        rows.append(
            {
                "flops": c,
                "n_opt": n_opt,
                "d_opt": c / (6 * n_opt),
                "loss": float(c0 + c1 * x_opt + c2 * x_opt**2),
                "runs": int(sel.sum()),
                "inside": inside,
            }
        )
    return rows, warnings


def fit_isoflop(
    runs: Runs, bootstrap: int = 0, seed: int = 0, level: float = 0.95, tolerance: float = 0.1, name: str = "fit"
) -> FitResult:
    """Approach 2: IsoFLOP profiles. Budgets are the ``flops`` column (or 6ND) grouped within ``tolerance``."""
    t0 = time.perf_counter()
    runs = runs.final()
    labels = group_budgets(runs.flops, tolerance)

    def estimate(r: Runs, lab: np.ndarray):
        rows, warns = _isoflop_minima(r, lab)
        if len(rows) < 2:
            raise DataError(
                f"{runs.source}: approach 2 needs at least 2 compute budgets with 3+ model sizes each "
                f"(found {len(rows)}); group runs by budget in a flops column"
            )
        return (*_frontier_estimates(rows, name), rows, warns)

    law, est, rss, rows, warnings = estimate(runs, labels)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]

    def resample(rng: np.random.Generator) -> dict[str, float]:  # resample runs within each budget
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        return estimate(runs.take(idx), labels[idx])[1]

    samples, failed = _bootstrap(resample, bootstrap, seed)
    if failed:
        warnings.append(f"{failed} of {bootstrap} bootstrap fits failed and were left out")
    return FitResult(
        approach=2,
        law=law,
        estimates=est,
        ci=_intervals(samples, level),
        objective=rss,
        n_points=len(runs),
        seconds=time.perf_counter() - t0,
        bootstrap=bootstrap,
        details=rows,
        warnings=warnings,
        runs=runs,
    )


def _envelope(runs: Runs, n_bins: int) -> list[dict[str, float]]:
    """At log-spaced FLOP counts, the run with the lowest (interpolated) loss among those that reach it."""
    curves = []
    for r in np.unique(runs.run):
        sel = np.flatnonzero(runs.run == r)
        sel = sel[np.argsort(runs.flops[sel])]
        curves.append((np.log(runs.flops[sel]), runs.loss[sel], float(runs.params[sel[0]])))
    lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    rows = []
    for x in np.linspace(lo, hi, n_bins):
        cover = [(float(np.interp(x, lc, loss)), n) for lc, loss, n in curves if lc[0] <= x <= lc[-1]]
        if len(cover) >= 2:  # a choice between at least two runs
            best_loss, n = min(cover)
            rows.append({"flops": float(np.exp(x)), "n_opt": n, "loss": best_loss})
    return rows


def fit_envelope(
    runs: Runs, bootstrap: int = 0, seed: int = 0, level: float = 0.95, n_bins: int = 40, name: str = "fit"
) -> FitResult:
    """Approach 1: the lower envelope of loss over FLOPs across runs, then N_opt = k C^a."""
    t0 = time.perf_counter()
    if not runs.has_curves:
        raise DataError(
            f"{runs.source}: approach 1 needs loss curves: a run column with several rows per run "
            "(and a step column); use approach 2 or 3 for one row per run"
        )
    run_ids = np.unique(runs.run)

    def estimate(r: Runs):
        rows = _envelope(r, n_bins)
        if len(rows) < 3 or len({x["n_opt"] for x in rows}) < 2:
            raise DataError(
                f"{runs.source}: the loss-curve envelope is won by a single model size; approach 1 "
                "needs curves of several sizes that cross over a range of FLOPs"
            )
        return (*_frontier_estimates(rows, name), rows)

    law, est, rss, rows = estimate(runs)

    def resample(rng: np.random.Generator) -> dict[str, float]:  # resample whole runs (curves)
        picked = rng.choice(run_ids, len(run_ids))
        idx = np.concatenate([np.flatnonzero(runs.run == r) for r in picked])
        sub = runs.take(idx)
        sub.run = np.concatenate([[f"{i}"] * int((runs.run == r).sum()) for i, r in enumerate(picked)])
        return estimate(sub)[1]

    samples, failed = _bootstrap(resample, bootstrap, seed)
    warnings = [f"{failed} of {bootstrap} bootstrap fits failed and were left out"] if failed else []
    return FitResult(
        approach=1,
        law=law,
        estimates=est,
        ci=_intervals(samples, level),
        objective=rss,
        n_points=len(runs),
        seconds=time.perf_counter() - t0,
        bootstrap=bootstrap,
        details=rows,
        warnings=warnings,
        runs=runs,
    )


# ---------------------------------------------------------------------------------------------
# the one entry point
# ---------------------------------------------------------------------------------------------


def fit(
    source: Any, approach: int = 3, bootstrap: int = 0, seed: int = 0, level: float = 0.95, **options: Any
) -> FitResult:
    """Fit a scaling law to a runs CSV path, a mapping of columns, rows of mappings or a data frame.

    ``options`` go to the approach: ``top_k``, ``max_iter``, ``starts`` (3); ``tolerance`` (2);
    ``n_bins`` (1).
    """
    fitters = {3: fit_parametric, 2: fit_isoflop, 1: fit_envelope}
    if approach not in fitters:
        raise ConfigError(f"approach: must be 1, 2 or 3, got {approach!r}")
    if bootstrap < 0:
        raise ConfigError(f"bootstrap: must be >= 0, got {bootstrap}")
    if not 0 < level < 1:
        raise ConfigError(f"level: must be in (0, 1), got {level}")
    if isinstance(source, (str, Path)):  # name the law after the runs file
        options.setdefault("name", Path(source).stem)
    return fitters[approach](load_runs(source), bootstrap=bootstrap, seed=seed, level=level, **options)
