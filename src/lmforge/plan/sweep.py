"""IsoFLOP sweeps: train small models along a few compute budgets and fit the law they follow.

For each budget C the sweep picks ``sizes`` model sizes N log-spaced within ``spread``x of a
centre, turns each N into a concrete shape (the planner's shape rule on the run's model template,
keeping its head size), trains it with the engine on D = C / (6 N) tokens (the schedule's length
matched to that token budget), and appends ``params,tokens,loss,flops,run`` to ``runs.csv`` as
each run finishes.

The sizes adapt to what the runs show, because the right tokens-per-parameter ratio for a new
model family and corpus is what the sweep is there to find:

* the first budget is centred on ``tokens_per_param`` (default 20, Chinchilla's ratio);
* when a budget's lowest loss sits at its smallest or largest size, one more size is trained
  beyond that edge (up to ``extend`` times), so that each IsoFLOP curve brackets its minimum;
* every later budget is centred on the previous budget's best N scaled by sqrt(C / C_prev)
  (N_opt ~ C^0.5), not on the first guess again.

Every decision is read back from ``runs.csv``, so a second call replays the same plan, skips
finished runs and resumes an interrupted one from its checkpoint. Then it fits the law
(Approach 3, and Approach 2 when every budget has three sizes or more) and allocates a larger
budget with bootstrap intervals.
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
        return {
            "directory": str(self.directory),
            "runs": self.runs,
            "fits": {str(k): v.to_dict() for k, v in self.fits.items()},
            "allocation": self.allocation,
            "plots": [str(p) for p in self.plots],
        }


def with_dataset(base, log=print):
    """The base run with its dataset prepared and pinned, and the model's vocabulary set from the
    tokenizer, so that planned parameter counts are the trained models' exact counts."""
    from lmforge.device import resolve_device
    from lmforge.train import distributed as D
    from lmforge.train.run import dataset_dir, fit_model_to_tokenizer, prepare_dataset

    dataset = prepare_dataset(base, D.setup(resolve_device(base.train.device)), log)
    return base.replace(
        model=fit_model_to_tokenizer(base.model, dataset.tokenizer, base.data.objective),
        data={**base.data.to_dict(), "path": str(dataset_dir(base))},
    )


def sized_run(base, budget: float, n_params: float) -> SweepRun:
    """The run of ``budget`` FLOPs whose shape is closest to ``n_params`` parameters."""
    from lmforge.accounting import count_params

    if budget <= 0:
        raise ConfigError(f"sweep: budgets must be positive, got {budget:g}")
    shape = shape_for(float(n_params), template=base.model, counts="total", head_dim=base.model.head_dim)
    params = count_params(shape).total
    tokens_per_step = base.train.batch_size * base.data.seq_len
    steps = int(budget / (6 * params) // tokens_per_step)
    if steps < 10:
        raise ConfigError(
            f"sweep: budget {budget:.3g} FLOPs gives the {params:,}-parameter model only "
            f"{steps} steps of {tokens_per_step} tokens; raise the budget or lower "
            "train.batch_size / data.seq_len"
        )
    return SweepRun(
        f"C{budget:.2g}-L{shape.n_layer}-d{shape.d_model}".replace("+", ""),
        budget,
        params,
        steps * tokens_per_step,
        steps,
        shape.to_dict(),
    )


def budget_runs(base, budget: float, centre: float, sizes: int = 4, spread: float = 4.0) -> list[SweepRun]:
    """``sizes`` distinct shapes for one budget, N log-spaced within ``spread``x of ``centre``."""
    if sizes < 1 or spread < 1:
        raise ConfigError("sweep: need sizes >= 1 and spread >= 1")
    targets = np.geomspace(centre / spread, centre * spread, sizes) if sizes > 1 else [centre]
    runs: dict[str, SweepRun] = {}
    for n in targets:  # two targets rounded to the same shape count once
        run = sized_run(base, budget, n)
        runs.setdefault(run.label, run)
    return sorted(runs.values(), key=lambda r: r.params)


def plan_runs(
    base, budgets: list[float], sizes: int = 4, spread: float = 4.0, tokens_per_param: float = TOKENS_PER_PARAM_GUESS
) -> list[SweepRun]:
    """The first-guess runs of every budget (before any result moves the centres)."""
    return [
        run
        for budget in sorted(budgets)
        for run in budget_runs(base, budget, _guess(budget, tokens_per_param), sizes, spread)
    ]


def _guess(budget: float, tokens_per_param: float) -> float:
    if tokens_per_param <= 0:
        raise ConfigError(f"sweep: tokens_per_param must be positive, got {tokens_per_param:g}")
    return math.sqrt(budget / (6 * tokens_per_param))  # C = 6 N D with D = r N


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
    return base.replace(
        name=run.label,
        out_dir=str(directory / "runs" / run.label),
        model=run.model,
        train={
            **base.train.to_dict(),
            "max_steps": run.steps,
            "warmup_steps": base.train.warmup_for(run.steps),
            "eval_every": 0,
            "checkpoint_every": max(50, run.steps // 4),
            "keep_checkpoints": 1,
            "sample_tokens": 0,
        },
    )


def _train_one(cfg_dict: dict[str, Any], resume: bool) -> tuple[float | None, str | None]:
    """Train one run (in this process or a worker): its final validation loss and what stopped it."""
    from lmforge.train import RunConfig
    from lmforge.train.run import pretrain

    result = pretrain(RunConfig.from_dict(cfg_dict), resume=resume, overwrite=not resume, log=lambda m: None)
    return result.metrics.get("loss"), result.stopped_by


def _train(
    base, runs: list[SweepRun], directory: Path, done: dict[str, float], note: str, log, jobs: int = 1
) -> dict[str, float]:
    """Train ``runs`` (``jobs`` at a time; those in runs.csv are skipped) and return their
    final validation losses."""
    from lmforge.train.checkpoint import list_checkpoints

    todo = []
    for run in runs:
        if run.label in done:
            log(f"{note} {run.label}: finished earlier, skipped")
            continue
        cfg = _run_config(base, run, directory)
        resume = bool(list_checkpoints(cfg.run_dir))
        log(
            f"{note} {run.label}: {run.params:,} parameters, {run.tokens:,} tokens "
            f"({run.tokens / run.params:.0f} per parameter), {run.steps} steps{' (resuming)' if resume else ''}"
        )
        todo.append((run, cfg, resume))

    def record(run: SweepRun, loss: float | None, stopped_by: str | None) -> None:
        if stopped_by:
            raise KeyboardInterrupt(f"sweep interrupted by {stopped_by}; run it again to continue")
        if loss is None or not math.isfinite(loss):
            raise ConfigError(f"sweep: run {run.label} ended without a finite validation loss")
        row = {
            "params": run.params,
            "tokens": run.tokens,
            "loss": f"{loss:.6f}",
            "flops": 6 * run.params * run.tokens,
            "run": run.label,
        }
        _append_row(directory / "runs.csv", row)
        log(f"    {run.label}: validation loss {loss:.4f}")
        done[run.label] = float(row["loss"])  # decisions use the value runs.csv holds, so a resume replays them

    if jobs <= 1 or len(todo) <= 1:
        for run, cfg, resume in todo:
            record(run, *_train_one(cfg.to_dict(), resume))
    else:  # small models leave cores idle: train several at once, the cores split between them
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (base.train.threads or os.cpu_count() or 1) // jobs)
        # the workers share the cores: OpenMP threads that spin while they wait would starve each other
        policy = os.environ.get("OMP_WAIT_POLICY")
        os.environ["OMP_WAIT_POLICY"] = policy or "PASSIVE"  # read by each worker's OpenMP as it starts
        try:
            with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {
                    pool.submit(
                        _train_one, cfg.replace(train={**cfg.train.to_dict(), "threads": threads}).to_dict(), resume
                    ): run
                    for run, cfg, resume in todo
                }
                try:
                    for future in as_completed(futures):
                        record(futures[future], *future.result())
                except BaseException:
                    for future in futures:  # runs not started yet stay for the next call
                        future.cancel()
                    raise
        finally:
            if policy is None:
                del os.environ["OMP_WAIT_POLICY"]
    return {run.label: done[run.label] for run in runs}


def sweep(
    base,
    budgets: list[float],
    directory: str | Path,
    sizes: int = 4,
    spread: float = 4.0,
    target_flops: float | None = None,
    bootstrap: int = 100,
    seed: int = 0,
    plot: bool = True,
    tokens_per_param: float = TOKENS_PER_PARAM_GUESS,
    extend: int = 2,
    jobs: int = 1,
    log=print,
) -> SweepResult:
    """Run (or finish) the sweep in ``directory``; see the module docstring. ``jobs > 1`` trains
    in spawned worker processes: a script that calls this needs ``if __name__ == "__main__":``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = with_dataset(base, log)
    budgets = sorted(budgets)
    done = {row["run"]: float(row["loss"]) for row in _read_rows(directory / "runs.csv")}
    step = spread ** (2 / (sizes - 1)) if sizes > 1 else 2.0  # ratio between neighbouring sizes
    planned: list[SweepRun] = []

    def write_plan(runs: list[SweepRun]) -> None:
        planned.extend(runs)
        (directory / "sweep.json").write_text(
            json.dumps(
                {
                    "base": base.to_dict(),
                    "budgets": budgets,
                    "sizes": sizes,
                    "spread": spread,
                    "tokens_per_param": tokens_per_param,
                    "extend": extend,
                    "runs": [r.__dict__ for r in planned],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )

    centre = _guess(budgets[0], tokens_per_param)
    for b, budget in enumerate(budgets, 1):
        note = f"[budget {b}/{len(budgets)} {budget:.3g}]"
        runs = budget_runs(base, budget, centre, sizes, spread)
        write_plan(runs)
        losses = _train(base, runs, directory, done, note, log, jobs)
        for _ in range(extend):
            best = min(runs, key=lambda r: losses[r.label])
            if len(runs) < 2 or best not in (runs[0], runs[-1]):
                break
            outward = runs[0].params / step if best is runs[0] else runs[-1].params * step
            try:
                extra = sized_run(base, budget, outward)
            except ConfigError:  # too large for ten steps: the edge is as far as this budget goes
                break
            if extra.label in losses:  # no smaller (or larger) shape exists
                break
            log(
                f"    lowest loss at the {'smallest' if best is runs[0] else 'largest'} size: "
                f"adding {extra.params:,} parameters"
            )
            write_plan([extra])
            losses.update(_train(base, [extra], directory, done, note, log))
            runs = sorted(runs + [extra], key=lambda r: r.params)
        best = min(runs, key=lambda r: losses[r.label])
        if b < len(budgets):
            centre = best.params * math.sqrt(budgets[b] / budget)
    return summarize(directory, target_flops, bootstrap, seed, plot, log)


def summarize(
    directory: str | Path,
    target_flops: float | None = None,
    bootstrap: int = 100,
    seed: int = 0,
    plot: bool = True,
    log=print,
) -> SweepResult:
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
    template = available = base = None  # the sweep's own model family, vocabulary and head size, and its data
    if (directory / "sweep.json").is_file():
        base = json.loads((directory / "sweep.json").read_text())["base"]
        template = ModelConfig.from_dict(base["model"])
        available = _train_tokens(base["data"].get("path"))
    for approach, result in fits.items():
        law_file = {**result.to_dict(), **({"fitted_on": fitted_on(base)} if base else {})}
        (directory / f"law-approach{approach}.json").write_text(json.dumps(law_file, indent=2) + "\n")
        log(result.summary())
    target = target_flops or 100 * max(budgets)
    alloc = allocate(
        flops=target,
        law=fits[3].law,
        template=template,
        available_tokens=available,
        head_dim=template.head_dim if template else None,
    )
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


def fitted_on(base: dict[str, Any]) -> dict[str, Any]:
    """What a law holds for: the sweep's data, tokenizer, context and objective, and the batch and
    learning rate every run trained with (``lmforge train --budget`` plans with these)."""
    d, t, m = base["data"], base["train"], base["model"]
    return {
        "source": d["source"],
        "tokenizer": d["tokenizer"],
        "vocab_size": m["vocab_size"],
        "objective": d["objective"],
        "seq_len": d["seq_len"],
        "arch": m["arch"],
        "optimizer": t["optimizer"],
        "batch_size": t["batch_size"],
        "lr": t["lr"],
    }


def _train_tokens(path: str | None) -> int | None:
    """Training tokens of the sweep's dataset (for the data-constrained warning), if it is still there."""
    meta = Path(path or "", "meta.json")
    if not path or not meta.is_file():
        return None
    return int(json.loads(meta.read_text(encoding="utf-8"))["splits"]["train"]["tokens"])


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
