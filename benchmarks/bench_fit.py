"""Time Chinchilla's Approach 3 fit: the vectorised grid + top-k refinement vs plain multi-start.

Plain multi-start (Chinchilla's recipe) runs L-BFGS from all 4,500 grid points; lmforge evaluates
the objective on the whole grid at once and refines only the best ``top_k``. Both should reach
the same optimum. Usage::

    python benchmarks/bench_fit.py [--points 240] [--top-k 32] [--noise 0.01] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

from lmforge.plan.fit import fit_parametric, synthetic_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=240, help="synthetic runs (8 budgets x points/8 sizes)")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--noise", type=float, default=0.01, help="log-normal noise on the loss")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    runs = synthetic_runs("epoch", sizes=max(1, args.points // 8), noise=args.noise, seed=args.seed)
    results = {}
    for label, top_k in ((f"grid + top-{args.top_k} L-BFGS", args.top_k), ("plain multi-start (4,500 L-BFGS)", None)):
        t0 = time.perf_counter()
        results[label] = fit_parametric(runs, top_k=top_k)
        print(f"{label:<34} {time.perf_counter() - t0:8.2f} s   Huber sum {results[label].objective:.12e}")
    fast, plain = results.values()
    print(f"{len(runs)} points; Huber-sum difference (fast - plain): {fast.objective - plain.objective:+.3e}")
    for name in ("E", "A", "B", "alpha", "beta"):
        print(f"  {name:>5}: {fast.estimates[name]:.6g} vs {plain.estimates[name]:.6g}")


if __name__ == "__main__":
    main()
