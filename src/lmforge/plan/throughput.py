"""A throughput model of a machine: how fast it trains a model of N parameters.

A time budget is not a FLOP budget: a machine delivers ``peak x MFU`` FLOP/s, and the model FLOP
utilisation depends on the model. Small models reach far lower MFU than large ones (per-op
overheads, small matmuls, the optimizer step, all weigh more), most of all on a CPU. The planner
therefore needs, for any N, the tokens per second this machine trains it at:

* a table of measured points, one per model shape: total parameters, training FLOPs per token
  (6N + attention, the MFU convention of :mod:`lmforge.accounting`), tokens/s and MFU;
* MFU interpolated linearly in log(parameters) between the points, and held flat beyond the
  smallest and the largest; tokens/s of any shape = peak x MFU(N) / its FLOPs per token;
* or a fixed MFU (``--mfu``), which turns the time budget into a FLOP budget for every N alike.

The points are measured by :func:`lmforge.jobs.measure_throughput` (a few training steps of each
shape, with the engine's own step) and cached as JSON in a per-user cache directory
(``$LMFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmforge``, else ``~/.cache/lmforge``), one file per
machine (host name, CPU model, thread count) and device, with one entry per measurement setting
(model family, context, batch, precision), so a later plan on the same machine measures nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.accounting import human
from lmforge.errors import ConfigError

SCHEMA = 1
CACHE_ENV = "LMFORGE_CACHE_DIR"


@dataclass
class ThroughputPoint:
    """One measured shape: its size, its FLOPs per token, and the rate it trained at."""

    label: str  # e.g. L2-d64
    params: int  # total parameters (the N of the laws that count total parameters)
    flops_per_token: float  # training FLOPs per token: 6N + attention
    tokens_per_s: float
    mfu: float
    steps: int = 0  # timed optimizer steps behind the rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Throughput:
    """Tokens/s and MFU of any model size on one machine and device (see the module docstring)."""

    device: str  # "cpu" or the CUDA device name
    machine: str  # host / CPU model / threads
    peak_flops: float  # FLOP/s the MFUs are relative to
    points: list[ThroughputPoint] = field(default_factory=list)
    setting: dict[str, Any] = field(default_factory=dict)  # what the points were measured with
    source: str = ""  # where the numbers come from, for the printed plan
    fixed_mfu: float | None = None  # --mfu: one MFU for every size, no points

    def __post_init__(self) -> None:
        if not (math.isfinite(self.peak_flops) and self.peak_flops > 0):
            raise ConfigError(f"throughput: the peak must be a positive FLOP/s, got {self.peak_flops}")
        if self.fixed_mfu is not None and not 0 < self.fixed_mfu <= 1:
            raise ConfigError(f"mfu: must be in (0, 1], got {self.fixed_mfu}")
        if self.fixed_mfu is None and not self.points:
            raise ConfigError("throughput: no measured points and no fixed MFU")
        for p in self.points:
            if not (p.params > 0 and p.flops_per_token > 0 and p.tokens_per_s > 0 and p.mfu > 0):
                raise ConfigError(f"throughput: point {p.label} has a non-positive size, cost or rate")
        self.points = sorted(self.points, key=lambda p: p.params)

    def mfu(self, n_params):
        """MFU of a model of ``n_params`` total parameters: linear in log N between the measured
        points, flat beyond them (or the fixed MFU)."""
        n = np.asarray(n_params, dtype=float)
        if self.fixed_mfu is not None:
            out = np.full_like(n, self.fixed_mfu)
        else:
            xs = np.log([p.params for p in self.points])
            out = np.interp(np.log(n), xs, [p.mfu for p in self.points])
        return out if out.ndim else float(out)

    @property
    def max_mfu(self) -> float:
        return self.fixed_mfu if self.fixed_mfu is not None else max(p.mfu for p in self.points)

    def tokens_per_second(self, n_params, flops_per_token):
        """Training tokens per second of a model of ``n_params`` total parameters that costs
        ``flops_per_token`` training FLOPs per token."""
        out = self.peak_flops * np.asarray(self.mfu(n_params)) / np.asarray(flops_per_token, dtype=float)
        return out if np.ndim(out) else float(out)

    def summary(self) -> str:
        head = f"throughput model: {self.device} on {self.machine}, peak {human(self.peak_flops, 'FLOP/s')}"
        if self.fixed_mfu is not None:
            return f"{head}, MFU {self.fixed_mfu:.0%} for every size ({self.source or 'given'})"
        lines = [f"{head} ({self.source})" if self.source else head]
        setting = ", ".join(f"{k} {v}" for k, v in self.setting.items() if k in ("batch_size", "seq_len", "dtype"))
        lines.append(
            f"  {'shape':>10} {'params':>9} {'tokens/s':>10} {'MFU':>6}" + (f"   ({setting})" if setting else "")
        )
        for p in self.points:
            lines.append(f"  {p.label:>10} {human(p.params):>9} {human(p.tokens_per_s):>10} {p.mfu:>6.1%}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "machine": self.machine,
            "peak_flops": self.peak_flops,
            "points": [p.to_dict() for p in self.points],
            "setting": self.setting,
            "source": self.source,
            "fixed_mfu": self.fixed_mfu,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Throughput:
        try:
            points = [ThroughputPoint(**p) for p in d.get("points", [])]
            return cls(
                device=d["device"],
                machine=d.get("machine", ""),
                peak_flops=float(d["peak_flops"]),
                points=points,
                setting=dict(d.get("setting", {})),
                source=d.get("source", ""),
                fixed_mfu=d.get("fixed_mfu"),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"throughput: malformed throughput table ({e})") from None


def fixed_throughput(mfu: float, peak_flops: float, device: str, machine: str = "") -> Throughput:
    """The throughput of ``--mfu``: one utilisation for every model size."""
    return Throughput(device, machine or machine_id(), peak_flops, fixed_mfu=mfu, source=f"--mfu {mfu:g}, given")


# ---------------------------------------------------------------------------------------------
# the per-user cache
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$LMFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmforge``, else ``~/.cache/lmforge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmforge"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_id(threads: int | None = None) -> str:
    """What the rates depend on besides the device: host name, CPU model and the thread count."""
    parts = [socket.gethostname() or "host", _cpu_model()]
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return " / ".join(parts)


def cache_path(machine: str, device: str) -> Path:
    """The cache file of one machine and device."""
    key = f"{machine}|{device}"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{device}-{machine.split(' / ')[0]}".lower()).strip("-")[:60]
    return cache_dir() / "throughput" / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # a cache that cannot be read is measured again
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def cached_peak(machine: str, device: str) -> float | None:
    """The peak FLOP/s recorded for this machine and device (the MFUs of its points are relative to it)."""
    data = _read(cache_path(machine, device))
    peak = data.get("peak_flops") if data else None
    return float(peak) if isinstance(peak, (int, float)) and peak > 0 else None


def load_cached(machine: str, device: str, setting: dict[str, Any]) -> Throughput | None:
    """The cached points of this machine, device and setting, or None."""
    path = cache_path(machine, device)
    data = _read(path)
    peak = cached_peak(machine, device)
    if data is None or peak is None:
        return None
    for entry in data.get("entries", []):
        if entry.get("setting") == setting and entry.get("points"):
            measured = f"measured {entry['measured']}, " if entry.get("measured") else ""
            try:
                return Throughput.from_dict(
                    {
                        "device": device,
                        "machine": machine,
                        "peak_flops": peak,
                        "points": entry["points"],
                        "setting": setting,
                        "source": f"{measured}cached in {path}",
                    }
                )
            except ConfigError:
                return None
    return None


def store(tp: Throughput, measured: str = "") -> Path:
    """Add ``tp``'s points to the cache entry of its setting (a shape measured again replaces its
    point) and record its peak, rescaling the MFUs of every cached point to it; the file's path."""
    path = cache_path(tp.machine, tp.device)
    data = _read(path) or {"schema": SCHEMA, "machine": tp.machine, "device": tp.device, "entries": []}
    for entry in data["entries"]:  # MFU = tokens/s x FLOPs per token / peak, under the one peak of the file
        for p in entry.get("points", []):
            p["mfu"] = p["tokens_per_s"] * p["flops_per_token"] / tp.peak_flops
    data["peak_flops"] = tp.peak_flops
    old = next((e for e in data["entries"] if e.get("setting") == tp.setting), {})
    points = {p["label"]: p for p in old.get("points", [])}
    points.update({p.label: p.to_dict() for p in tp.points})
    data["entries"] = [e for e in data["entries"] if e.get("setting") != tp.setting] + [
        {
            "setting": tp.setting,
            "measured": measured or old.get("measured", ""),
            "points": sorted(points.values(), key=lambda p: p["params"]),
        }
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
