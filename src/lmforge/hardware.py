"""Devices and what they do per second: peak FLOP/s of known accelerators (and the measured CPU's),
MFU, and the wall time and cost of a FLOP budget on them. Arithmetic only (plus one timed matmul for
the CPU peak), below the accounting of models (:mod:`lmforge.accounting`)."""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """An accelerator: dense bf16 (fp16 where there is no bf16) peak FLOP/s and memory.

    ``price`` is a rough on-demand cloud price in USD per device-hour (2024-25 list prices);
    pass your own price wherever it matters.
    """

    name: str
    peak_flops: float
    memory_gib: float
    price: float
    pattern: str  # regular expression matched against torch.cuda.get_device_name()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "pattern"}


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("b200", 2.25e15, 180, 6.00, r"B200"),
        Device("h200", 989.4e12, 141, 3.50, r"H200"),
        Device("h100-sxm", 989.4e12, 80, 3.00, r"H100(?!.*PCIe)"),
        Device("h100-pcie", 756.0e12, 80, 2.50, r"H100.*PCIe"),
        Device("a100-80gb", 312e12, 80, 1.80, r"A100.*80\s*GB"),
        Device("a100-40gb", 312e12, 40, 1.30, r"A100"),
        Device("l40s", 362e12, 48, 1.00, r"L40S"),
        Device("a10", 125e12, 24, 0.75, r"A10G?\b"),
        Device("l4", 121e12, 24, 0.70, r"\bL4\b"),
        Device("v100", 125e12, 32, 0.90, r"V100"),  # fp16 tensor cores: no bf16
        Device("mi300x", 1307.4e12, 192, 4.00, r"MI300X"),
    )
}
DEVICE_ALIASES = {"h100": "h100-sxm", "a100": "a100-80gb", "a10g": "a10"}


def lookup_device(name: str) -> Device:
    """A device of the table by name (case-insensitive; ``h100`` = ``h100-sxm``, ``a100`` = ``a100-80gb``)."""
    key = name.strip().lower()
    key = DEVICE_ALIASES.get(key, key)
    if key not in DEVICES:
        raise ConfigError(
            f"device: unknown device {name!r}; choose one of {', '.join(DEVICES)} (or give the budget in FLOPs)"
        )
    return DEVICES[key]


def device_from_cuda_name(cuda_name: str) -> Device | None:
    """Match a ``torch.cuda.get_device_name()`` string against the table (None when unknown)."""
    for dev in DEVICES.values():  # ordered so that more specific patterns come first
        if re.search(dev.pattern, cuda_name, flags=re.IGNORECASE):
            return dev
    return None


@functools.cache
def measure_cpu_peak(sizes: tuple[int, ...] = (2048, 3072), repeats: int = 7, warmup_s: float = 0.5) -> float:
    """Achievable fp32 FLOP/s of this CPU: the best of ``repeats`` timed ``size x size`` matmuls
    for each size, after ``warmup_s`` seconds of the same work (thread pool, caches, clock speed: a
    cold measurement read 10-20% low on a 2-core VM and put MFU above 100%). Several sizes, because
    MKL's rate depends on the shape (2048: 168, 3072: 158, 4096: 139 GFLOP/s on that VM)."""
    import torch

    best_rate = 0.0
    for i, size in enumerate(sizes):
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)
        t_end = time.perf_counter() + (warmup_s if i == 0 else 0.0)
        while time.perf_counter() < t_end:
            torch.mm(a, b)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        best_rate = max(best_rate, 2 * size**3 / best)
    return best_rate


def device_peak(device: Any = "cpu") -> float | None:
    """Peak FLOP/s of a torch device (or device string / table name).

    CUDA devices are looked up in :data:`DEVICES` by ``torch.cuda.get_device_name``; the CPU peak
    is measured (:func:`measure_cpu_peak`). Returns None for a GPU that is not in the table.
    """
    name = str(device).lower()
    key = DEVICE_ALIASES.get(name, name)
    if key in DEVICES:
        return DEVICES[key].peak_flops
    if name.startswith("cpu"):
        return measure_cpu_peak()
    if name.startswith("cuda"):
        import torch

        dev = device_from_cuda_name(torch.cuda.get_device_name(device))
        return dev.peak_flops if dev else None
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOP utilisation: achieved model FLOP/s over the peak FLOP/s of the hardware used."""
    if peak <= 0:
        raise ConfigError(f"peak: must be positive, got {peak}")
    return tokens_per_s * flops_per_token / peak


@dataclass
class TimeCost:
    """Wall time and cost of ``flops`` on ``n_devices`` devices at a given MFU."""

    flops: float
    device: str
    n_devices: int
    mfu: float
    seconds: float
    device_hours: float
    dollars: float
    price: float

    @property
    def days(self) -> float:
        return self.seconds / 86400

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "days": self.days}


def _check_mfu(value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"mfu: must be in (0, 1], got {value} (typical: 0.3-0.5 on GPUs)")


def training_time(
    flops: float, device: str | Device, n_devices: int = 1, mfu: float = 0.4, price: float | None = None
) -> TimeCost:
    """Wall time and cost of ``flops`` training FLOPs (``price`` per device-hour overrides the table)."""
    dev = device if isinstance(device, Device) else lookup_device(device)
    _check_mfu(mfu)
    if n_devices <= 0:
        raise ConfigError(f"gpus: must be positive, got {n_devices}")
    seconds = flops / (n_devices * dev.peak_flops * mfu)
    hours = seconds / 3600 * n_devices
    price = dev.price if price is None else price
    return TimeCost(
        flops=flops,
        device=dev.name,
        n_devices=n_devices,
        mfu=mfu,
        seconds=seconds,
        device_hours=hours,
        dollars=hours * price,
        price=price,
    )


def flops_for(device: str | Device, hours: float, n_devices: int = 1, mfu: float = 0.4) -> float:
    """Training FLOPs that ``n_devices`` devices deliver in ``hours`` of wall time at ``mfu``."""
    dev = device if isinstance(device, Device) else lookup_device(device)
    _check_mfu(mfu)
    return hours * 3600 * n_devices * dev.peak_flops * mfu
