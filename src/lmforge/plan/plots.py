"""PNG plots of allocations and fits (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.errors import DataError
from lmforge.plan.allocate import Allocation, isoflop_curve
from lmforge.plan.fit import FitResult
from lmforge.plan.laws import Law


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _isoflops(ax, law: Law, budgets: np.ndarray, n_range: tuple[float, float]) -> None:
    """IsoFLOP curves of a parametric law and its frontier through their minima."""
    cmap = _pyplot().get_cmap("viridis")
    n = np.geomspace(*n_range, 200)
    for i, c in enumerate(budgets):
        ax.plot(n, isoflop_curve(law, c, n), color=cmap(i / max(1, len(budgets) - 1)), lw=1.2, label=f"{c:.1e} FLOPs")
    c_line = np.geomspace(budgets.min(), budgets.max(), 100)
    n_opt, d_opt = law.optimal(c_line)
    best = law.loss(n_opt, d_opt)
    ax.plot(n_opt, best, "k--", lw=1, label="frontier")
    span = best.max() - best.min()
    ax.set_ylim(best.min() - 0.3 * span, best.max() + 0.6 * span)  # the region around the minima
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")


def _frontier_panel(ax, law: Law, flops: np.ndarray, points=None) -> None:
    """N_opt(C) and D_opt(C) on log-log axes (with fitted points when given)."""
    n, d = law.optimal(flops)
    ax.loglog(flops, n, "C0-", label="N_opt")
    ax.loglog(flops, d, "C1-", label="D_opt")
    if points is not None:
        ax.loglog(points[0], points[1], "C0o", ms=4)
        ax.loglog(points[0], points[2], "C1o", ms=4)
    ax.set_xlabel("training FLOPs C")
    ax.legend(fontsize=8)


def plot_allocation(alloc: Allocation, path: str | Path) -> Path:
    """IsoFLOP curves around the budget and the frontier, with the chosen point marked."""
    plt = _pyplot()
    law = alloc.law
    c = alloc.train_flops  # the chosen model's training compute (the budget, unless inference-aware)
    budgets = c * 10.0 ** np.arange(-2, 3)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if law.loss(1e9, 1e10) is not None:
        _isoflops(ax, law, budgets, (alloc.params / 100, alloc.params * 100))
        ax.plot([alloc.params], [alloc.loss], "r*", ms=12, label=f"{alloc.objective} N* = {alloc.params:.3g}")
        ax.legend(fontsize=8)
    else:
        _frontier_panel(ax, law, np.geomspace(c / 1e3, c * 1e3, 50))
        ax.plot([c, c], [alloc.params, alloc.tokens], "r*", ms=12)
    ax.set_title(f"{law.name}: {alloc.objective} allocation, {c:.2g} training FLOPs")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG, creating missing parent directories; an unwritable path is a DataError."""
    plt = _pyplot()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise DataError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return path


def plot_fit(result: FitResult, path: str | Path) -> Path:
    """Left: the runs and the fitted curves; right: the frontier N_opt(C), D_opt(C)."""
    plt = _pyplot()
    runs, law = result.runs, result.law
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    c_range = np.geomspace(runs.flops.min(), runs.flops.max(), 50)
    if result.approach == 3:
        sc = left.scatter(runs.params, runs.loss, c=np.log10(runs.flops), s=10, cmap="viridis")
        fig.colorbar(sc, ax=left, label="log10 FLOPs")
        # the runs' own budgets when they form IsoFLOP groups (a sweep), else five across the range
        groups = np.round(np.log10(runs.flops), 1)
        budgets = (
            np.array([np.median(runs.flops[groups == g]) for g in np.unique(groups)])
            if len(np.unique(groups)) <= 8
            else np.geomspace(runs.flops.min(), runs.flops.max(), 5)
        )
        _isoflops(left, law, budgets, (runs.params.min(), runs.params.max()))
        left.set_ylim(runs.loss.min() * 0.97, runs.loss.max() * 1.03)
        _frontier_panel(right, law, c_range)
    elif result.approach == 2:
        left.scatter(runs.params, runs.loss, c=np.log10(runs.flops), s=10, cmap="viridis")
        for row in result.details:
            left.plot([row["n_opt"]], [row["loss"]], "r*", ms=9)
        left.set_xscale("log")
        left.set_xlabel("parameters N")
        left.set_ylabel("loss")
        pts = np.array([[r["flops"], r["n_opt"], r["d_opt"]] for r in result.details]).T
        _frontier_panel(right, law, c_range, pts)
    else:
        for r in np.unique(runs.run):
            sel = runs.run == r
            left.plot(runs.flops[sel], runs.loss[sel], lw=0.8, alpha=0.7)
        env = np.array([[r["flops"], r["loss"]] for r in result.details]).T
        left.plot(env[0], env[1], "k.", ms=4, label="envelope")
        left.set_xscale("log")
        left.set_xlabel("training FLOPs C")
        left.set_ylabel("loss")
        left.legend(fontsize=8)
        pts = np.array([[r["flops"], r["n_opt"], r["flops"] / (6 * r["n_opt"])] for r in result.details]).T
        _frontier_panel(right, law, c_range, pts)
    n_runs = len(np.unique(runs.run)) if runs.has_curves else len(runs)
    left.set_title(f"Approach {result.approach}: {n_runs} runs")
    right.set_title("compute-optimal frontier")
    fig.tight_layout()
    return _save(fig, path)
