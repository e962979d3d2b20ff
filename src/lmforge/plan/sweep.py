"""IsoFLOP sweeps: train small models along a few compute budgets and fit the law they follow.

For each budget C the sweep picks model sizes N log-spaced around a first guess (20 tokens per
parameter, Chinchilla's Approach 1-2 ratio), turns each N into a concrete shape (the planner's
shape rule on the run's model template, keeping its head size), trains it with the engine on D = C / (6 N) tokens (the
schedule's length matched to that token budget), and appends ``params,tokens,loss,flops,run`` to
``runs.csv`` as each run finishes. A second call skips finished runs and resumes an interrupted
one from its checkpoint. Then it fits the law (Approach 3, and Approach 2 when every budget has
three sizes or more) and allocates a larger budget with bootstrap intervals.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError, DataError
from lmforge.plan.allocate import allocate
from lmforge.plan.fit import FitResult, fit
from lmforge.plan.shapes import shape_for

FIELDS = ("params", "tokens", "loss", "flops", "run")
TOKENS_PER_PARAM_GUESS = 20.0


@dataclass
class SweepRun:
    label: str
    budget: float
    params: int  # exact total parameters of the shape
    tokens: int
    steps: int
    model: dict[str, Any]


@dataclass
class SweepResult:
    directory: Path
    runs: list[dict[str, float | str]]
    fits: dict[int, FitResult]
    allocation: dict[str, Any] | None
    plots: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "runs": self.runs,
                "fits": {str(k): v.to_dict() for k, v in self.fits.items()}, "allocation": self.allocation,
                "plots": [str(p) for p in self.plots]}


def with_dataset(base, log=print):
    """The base run with its dataset prepared and pinned, and the model's vocabulary set from the
    tokenizer, so that planned parameter counts are the trained models' exact counts."""
    from lmforge.device import resolve_device
    from lmforge.train import distributed as D
    from lmforge.train.run import dataset_dir, fit_model_to_tokenizer, prepare_dataset

    dataset = prepare_dataset(base, D.setup(resolve_device(base.train.device)), log)
    return base.replace(model=fit_model_to_tokenizer(base.model, dataset.tokenizer),
                        data={**base.data.to_dict(), "path": str(dataset_dir(base))})


def plan_runs(base, budgets: list[float], sizes: int = 4, spread: float = 4.0) -> list[SweepRun]:
    """The runs of a sweep: ``sizes`` shapes per budget, N log-spaced within ``spread``x of the guess."""
    from lmforge.accounting import count_params

    if sizes < 1 or spread < 1:
        raise ConfigError("sweep: need sizes >= 1 and spread >= 1")
    tokens_per_step = base.train.batch_size * base.data.seq_len
    runs, seen = [], set()
    for budget in sorted(budgets):
        if budget <= 0:
            raise ConfigError(f"sweep: budgets must be positive, got {budget:g}")
        guess = math.sqrt(budget / (6 * TOKENS_PER_PARAM_GUESS))
        for n in np.geomspace(guess / spread, guess * spread, sizes) if sizes > 1 else [guess]:
            shape = shape_for(float(n), template=base.model, counts="total", head_dim=base.model.head_dim)
            params = count_params(shape).total
            key = (budget, shape.n_layer, shape.d_model)
            if key in seen:  # two targets rounded to the same shape
                continue
            seen.add(key)
            tokens = budget / (6 * params)
            steps = int(tokens // tokens_per_step)
            if steps < 10:
                raise ConfigError(f"sweep: budget {budget:.3g} FLOPs gives the {params:,}-parameter model only "
                                  f"{steps} steps of {tokens_per_step} tokens; raise the budget or lower "
                                  "train.batch_size / data.seq_len")
            runs.append(SweepRun(f"C{budget:.2g}-L{shape.n_layer}-d{shape.d_model}".replace("+", ""), budget,
                                 params, steps * tokens_per_step, steps, shape.to_dict()))
    return runs


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _run_config(base, run: SweepRun, directory: Path):
    warmup = max(1, min(base.train.warmup_steps, run.steps // 10))
    return base.replace(
        name=run.label, out_dir=str(directory / "runs" / run.label), model=run.model,
        train={**base.train.to_dict(), "max_steps": run.steps, "warmup_steps": warmup, "eval_every": 0,
               "checkpoint_every": max(50, run.steps // 4), "keep_checkpoints": 1, "sample_tokens": 0})


def sweep(base, budgets: list[float], directory: str | Path, sizes: int = 4, spread: float = 4.0,
          target_flops: float | None = None, bootstrap: int = 100, seed: int = 0, plot: bool = True,
          log=print) -> SweepResult:
    """Run (or finish) the sweep in ``directory``; see the module docstring."""
    from lmforge.train.checkpoint import list_checkpoints
    from lmforge.train.run import pretrain

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = with_dataset(base, log)
    runs = plan_runs(base, budgets, sizes, spread)
    (directory / "sweep.json").write_text(json.dumps({
        "base": base.to_dict(), "budgets": sorted(budgets), "sizes": sizes, "spread": spread,
        "runs": [r.__dict__ for r in runs]}, indent=2) + "\n", encoding="utf-8")
    csv_path = directory / "runs.csv"
    done = {row["run"] for row in _read_rows(csv_path)}
    for i, run in enumerate(runs, 1):
        if run.label in done:
            log(f"[{i}/{len(runs)}] {run.label}: finished earlier, skipped")
            continue
        cfg = _run_config(base, run, directory)
        resume = bool(list_checkpoints(cfg.run_dir))
        log(f"[{i}/{len(runs)}] {run.label}: {run.params:,} parameters, {run.tokens:,} tokens, {run.steps} steps"
            f"{' (resuming)' if resume else ''}")
        result = pretrain(cfg, resume=resume, overwrite=not resume, log=lambda m: None)
        if result.stopped_by:
            raise KeyboardInterrupt(f"sweep interrupted by {result.stopped_by}; run it again to continue")
        loss = result.metrics.get("loss")
        if loss is None or not math.isfinite(loss):
            raise ConfigError(f"sweep: run {run.label} ended without a finite validation loss")
        _append_row(csv_path, {"params": run.params, "tokens": run.tokens, "loss": f"{loss:.6f}",
                               "flops": 6 * run.params * run.tokens, "run": run.label})
        log(f"    validation loss {loss:.4f}")
    return summarize(directory, target_flops, bootstrap, seed, plot, log)


def summarize(directory: str | Path, target_flops: float | None = None, bootstrap: int = 100, seed: int = 0,
              plot: bool = True, log=print) -> SweepResult:
    """Fit the sweep's runs.csv and allocate ``target_flops`` (default: 100x the largest budget)."""
    directory = Path(directory)
    csv_path = directory / "runs.csv"
    rows = _read_rows(csv_path)
    fits: dict[int, FitResult] = {3: fit(csv_path, approach=3, bootstrap=bootstrap, seed=seed)}
    budgets = [float(r["flops"]) for r in rows]
    per_budget = np.unique(np.round(np.log10(budgets), 1), return_counts=True)[1]
    if len(per_budget) >= 2 and per_budget.min() >= 3:
        try:
            fits[2] = fit(csv_path, approach=2, bootstrap=bootstrap, seed=seed)
        except DataError as e:  # e.g. a budget whose best size sits at the edge of its sizes
            log(f"approach 2 skipped: {e}")
    for approach, result in fits.items():
        (directory / f"law-approach{approach}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        log(result.summary())
    target = target_flops or 100 * max(budgets)
    template = None  # the sweep's own model family, vocabulary and head size
    if (directory / "sweep.json").is_file():
        template = ModelConfig.from_dict(json.loads((directory / "sweep.json").read_text())["base"]["model"])
    alloc = allocate(flops=target, law=fits[3].law, template=template,
                     head_dim=template.head_dim if template else None)
    low_high = _allocation_interval(fits[3], target)
    allocation = {**alloc.to_dict(), "params_interval": low_high[0], "tokens_interval": low_high[1]}
    log(alloc.summary())
    log(f"bootstrap interval of N* at {target:.3g} FLOPs: {low_high[0][0]:.3g} .. {low_high[0][1]:.3g}")
    plots = []
    if plot:
        from lmforge.plan.plots import plot_allocation, plot_fit

        plots = [plot_fit(fits[3], directory / "fit.png"), plot_allocation(alloc, directory / "allocation.png")]
    (directory / "allocation.json").write_text(json.dumps(allocation, indent=2, default=str) + "\n")
    return SweepResult(directory, rows, fits, allocation, plots)


def _allocation_interval(result: FitResult, flops: float) -> tuple[list[float], list[float]]:
    """N* and D* at ``flops`` over the bootstrap laws (their 95% spread), or the point estimate."""
    from lmforge.plan.fit import PARAMETRIC_NAMES
    from lmforge.plan.laws import ParametricLaw

    laws = [ParametricLaw("bootstrap", *(s[k] for k in PARAMETRIC_NAMES)) for s in result.samples]
    if not laws:
        n, d = (float(v) for v in result.law.optimal(flops))
        return [n, n], [d, d]
    nd = np.array([[float(v) for v in law.optimal(flops)] for law in laws])
    lo, hi = np.percentile(nd, [2.5, 97.5], axis=0)
    return [float(lo[0]), float(hi[0])], [float(lo[1]), float(hi[1])]
