"""The runs table a scaling law is fitted to: ``params,tokens,loss`` (optional ``flops``, ``run``,
``step``) from a CSV / JSON file, a list of records or columns; and synthetic runs drawn from a
known law, for tests and benchmarks of the fits (:mod:`lmforge.plan.fit`)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import ConfigError, DataError
from lmforge.plan.laws import Law, ParametricLaw, load_law


@dataclass
class Runs:
    """Training runs as arrays; ``run`` and ``step`` are None unless loss curves were given."""

    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    run: np.ndarray | None = None
    step: np.ndarray | None = None
    source: str = "runs"

    def __len__(self) -> int:
        return len(self.loss)

    def take(self, idx: np.ndarray) -> Runs:
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return Runs(
            self.params[idx],
            self.tokens[idx],
            self.loss[idx],
            self.flops[idx],
            pick(self.run),
            pick(self.step),
            self.source,
        )

    def to_csv(self, path: str | Path) -> Path:
        """Write the columns ``params,tokens,loss,flops`` (+ ``run,step``) that :func:`load_runs` reads."""
        cols = {"params": self.params, "tokens": self.tokens, "loss": self.loss, "flops": self.flops}
        if self.run is not None:
            cols["run"] = self.run
        if self.step is not None:
            cols["step"] = self.step
        with Path(path).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(cols)
            writer.writerows(zip(*(c.tolist() for c in cols.values())))
        return Path(path)

    @property
    def has_curves(self) -> bool:
        return self.run is not None and len(np.unique(self.run)) < len(self)

    def final(self) -> Runs:
        """The last row (largest step, else most tokens) of every run."""
        if not self.has_curves:
            return self
        order = self.step if self.step is not None else self.tokens
        last = {}
        for i, r in enumerate(self.run):
            if r not in last or order[i] > order[last[r]]:
                last[r] = i
        return self.take(np.array(sorted(last.values())))


def _read_columns(source: Any) -> tuple[dict[str, list], str, int]:
    """Columns (lower-cased names) from a CSV path, a mapping, rows of mappings or a data frame.

    Returns (columns, name for messages, line number of the first row).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: runs file not found")
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames
                rows = [row for row in reader if any(isinstance(v, str) and v.strip() for v in row.values())]
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from None
        if not header:
            raise DataError(f"{path}: empty file; expected a header params,tokens,loss[,flops]")
        return _columns(((name, [row.get(name) for row in rows]) for name in header if name), str(path)), str(path), 2
    if hasattr(source, "columns") and hasattr(source, "__getitem__"):  # a pandas-like data frame
        return _columns(((c, list(source[c])) for c in source.columns), "runs"), "runs", 1
    if isinstance(source, dict):
        return _columns(((k, list(np.atleast_1d(v))) for k, v in source.items()), "runs"), "runs", 1
    if isinstance(source, (list, tuple)) and all(isinstance(r, dict) for r in source):
        keys = list(dict.fromkeys(k for r in source for k in r))
        return _columns(((k, [r.get(k) for r in source]) for k in keys), "runs"), "runs", 1
    raise DataError(f"runs: expected a CSV path, a mapping of columns or a data frame, got {type(source).__name__}")


def _columns(named, where: str) -> dict[str, list]:
    """Columns by their lower-cased, stripped names; two that differ only in case or spaces
    (``Params`` and ``params``) are refused rather than merged."""
    cols: dict[str, list] = {}
    spelled: dict[str, str] = {}
    for name, values in named:
        key = str(name).strip().lower()
        if key in cols:
            raise DataError(
                f"{where}: columns {spelled[key]!r} and {str(name)!r} are the same column (names are "
                f"case-insensitive); keep one"
            )
        cols[key], spelled[key] = values, str(name)
    return cols


def _numbers(cols: dict[str, list], name: str, where: str, first_line: int) -> np.ndarray:
    out = np.empty(len(cols[name]))
    for i, v in enumerate(cols[name]):
        try:
            x = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise DataError(f"{where} line {first_line + i}: {name} is not a number: {v!r}") from None
        if not (math.isfinite(x) and x > 0):
            raise DataError(f"{where} line {first_line + i}: {name} must be a positive finite number, got {v!r}")
        out[i] = x
    return out


def load_runs(source: Any) -> Runs:
    """Read and check a runs table (see the module docstring for the columns)."""
    if isinstance(source, Runs):
        return source
    cols, where, first = _read_columns(source)
    need = "params,tokens,loss[,flops]"
    for col in ("params", "loss"):
        if col not in cols:
            raise DataError(f"{where}: missing column {col!r}; expected columns {need}")
    if "tokens" not in cols and "flops" not in cols:
        raise DataError(f"{where}: needs a tokens or a flops column; expected columns {need}")
    if not cols["loss"]:
        raise DataError(f"{where}: no rows; expected one row per training run ({need})")
    params = _numbers(cols, "params", where, first)
    loss = _numbers(cols, "loss", where, first)
    flops = _numbers(cols, "flops", where, first) if "flops" in cols else None
    tokens = _numbers(cols, "tokens", where, first) if "tokens" in cols else flops / (6 * params)
    if flops is None:
        flops = 6 * params * tokens
    run = np.array([str(r) for r in cols["run"]]) if "run" in cols else None
    step = _numbers(cols, "step", where, first) if "step" in cols and run is not None else None
    return Runs(params, tokens, loss, flops, run, step, where)


def synthetic_runs(
    law: Law | str = "epoch",
    budgets=(1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21, 3e21),
    sizes: int = 30,
    spread: float = 8.0,
    noise: float = 0.01,
    seed: int = 0,
    curves: bool = False,
    steps: int = 20,
) -> Runs:
    """Runs drawn from a parametric law with multiplicative (log-normal) noise, for demos and tests.

    Without ``curves``: an IsoFLOP design, ``sizes`` model sizes log-uniform within ``spread``x of
    N_opt for every budget (usable by Approaches 2 and 3). With ``curves``: ``sizes`` models spread
    over the budgets' N_opt range, each logged at ``steps`` points up to the largest budget.
    """
    law = load_law(law)
    if not isinstance(law, ParametricLaw):
        raise ConfigError(f"synthetic runs need a law with a loss model, not {law.name!r}")
    rng = np.random.default_rng(seed)
    budgets = np.asarray(budgets, float)
    if curves:
        n_lo, n_hi = (float(law.optimal(c)[0]) for c in (budgets.min(), budgets.max()))
        sizes_n = np.geomspace(n_lo / 2, n_hi * 2, sizes)
        params = np.repeat(sizes_n, steps)
        step = np.tile(np.arange(1, steps + 1), sizes).astype(float)
        tokens = budgets.max() / (6 * params) * np.geomspace(1e-3, 1, steps)[step.astype(int) - 1]
        run = np.repeat([f"n{i}" for i in range(sizes)], steps)
    else:
        n_opt = np.repeat(law.optimal(budgets)[0], sizes)
        params = n_opt * spread ** rng.uniform(-1, 1, len(n_opt))
        tokens = np.repeat(budgets, sizes) / (6 * params)
        run = step = None
    loss = law.loss(params, tokens) * np.exp(noise * rng.standard_normal(len(params)))
    return Runs(params, tokens, loss, 6 * params * tokens, run, step, source="synthetic")
