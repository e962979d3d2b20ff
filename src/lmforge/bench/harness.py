"""The benchmark harness: lmforge and a reference (HF transformers) timed side by side.

Each case gives two callables doing the same work (``work`` units each: tokens, bytes, fits). After
warm-up they run interleaved, A B A B ..., so drift in machine speed hits both alike; the report
holds the median rate of each, the median of the per-round ratios, MFU against the peak measured
on the spot, and the CPU load that other processes put on the machine meanwhile.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class CaseResult:
    name: str
    unit: str  # what ``work`` counts: "tokens", "MB", "fits", ...
    ours_rate: float  # median units/s
    ref_rate: float | None  # median units/s of the reference, if any
    ratio: float | None  # median over rounds of ours_rate / ref_rate
    ratios: list[float] = field(default_factory=list)
    ours_times: list[float] = field(default_factory=list)
    ref_times: list[float] = field(default_factory=list)
    mfu: float | None = None  # of the measured peak, for model cases
    ref_mfu: float | None = None
    check: str = ""  # e.g. "identical tokens", "max |dlogp| 2e-6"
    notes: dict[str, Any] = field(default_factory=dict)


class LoadMonitor:
    """CPU time used by *other* processes while a benchmark runs, in cores (from /proc/stat)."""

    def __enter__(self):
        self._sys0, self._self0, self._t0 = self._system_busy(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t0
        busy = (self._system_busy() - self._sys0) if self._sys0 is not None else None
        ours = time.process_time() - self._self0
        self.other_cores = None if busy is None or wall <= 0 else max(0.0, (busy - ours) / wall)
        return False

    @staticmethod
    def _system_busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _sync() -> None:
    """Wait for queued GPU kernels, so that a call's time includes its work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def interleave(
    ours: Callable[[], Any], ref: Callable[[], Any] | None, rounds: int = 5, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Seconds per call of each, alternating A B A B after ``warmup`` calls of each."""
    for _ in range(warmup):
        ours()
        if ref is not None:
            ref()
    t_ours, t_ref = [], []
    for _ in range(rounds):
        t_ours.append(_timed(ours))
        if ref is not None:
            t_ref.append(_timed(ref))
    return t_ours, t_ref


def run_case(
    name: str,
    unit: str,
    work: float,
    ours: Callable[[], Any],
    ref: Callable[[], Any] | None = None,
    rounds: int = 5,
    warmup: int = 1,
    flops_per_unit: float | None = None,
    peak: float | None = None,
    check: str = "",
    **notes,
) -> CaseResult:
    t_ours, t_ref = interleave(ours, ref, rounds, warmup)
    ours_rate = work / statistics.median(t_ours)
    ref_rate = work / statistics.median(t_ref) if t_ref else None
    ratios = [b / a for a, b in zip(t_ours, t_ref)]  # per round: ours rate / ref rate
    mfu = ref_mfu = None
    if flops_per_unit and peak:
        mfu = ours_rate * flops_per_unit / peak
        ref_mfu = ref_rate * flops_per_unit / peak if ref_rate else None
    return CaseResult(
        name,
        unit,
        ours_rate,
        ref_rate,
        statistics.median(ratios) if ratios else None,
        ratios,
        t_ours,
        t_ref,
        mfu,
        ref_mfu,
        check,
        notes,
    )


def system_info() -> dict[str, Any]:
    import lmforge

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmforge": lmforge.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[CaseResult]) -> str:
    w = max([34] + [len(r.name) for r in results])
    head = f"{'case':<{w}} {'unit/s':>8} {'lmforge':>10} {'ref':>10} {'ratio':>6} {'MFU':>6} {'ref MFU':>7}  check"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.name:<{w}} {r.unit:>8} {_fmt(r.ours_rate):>10} {_fmt(r.ref_rate):>10} "
            f"{_fmt(r.ratio, '.2f'):>6} {_fmt(r.mfu and 100 * r.mfu, '.0f') + ('%' if r.mfu else ''):>6} "
            f"{_fmt(r.ref_mfu and 100 * r.ref_mfu, '.0f') + ('%' if r.ref_mfu else ''):>7}  {r.check}"
        )
    return "\n".join(lines)


def write_report(results: list[CaseResult], path: str | Path, info: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"system": info, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return path
