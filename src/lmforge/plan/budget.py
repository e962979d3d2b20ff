"""A compute budget: training FLOPs, or device-hours or dollars on a known device turned into FLOPs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lmforge.errors import ConfigError
from lmforge.hardware import flops_for, lookup_device, training_time


@dataclass
class Budget:
    """A compute budget in training FLOPs, with the device view of it when a device is known."""

    flops: float
    device: str | None = None
    gpus: int = 1
    mfu: float = 0.4
    hours: float | None = None  # wall-clock hours on `gpus` devices
    dollars: float | None = None
    price: float | None = None  # USD per device-hour

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: must be a positive number, got {value}")


def resolve_budget(
    flops: float | None = None,
    device: str | None = None,
    hours: float | None = None,
    gpus: int = 1,
    mfu: float = 0.4,
    dollars: float | None = None,
    price: float | None = None,
) -> Budget | None:
    """A :class:`Budget` from exactly one of FLOPs, device-hours (``device`` + ``hours``) or ``dollars``.

    Returns None when no budget is given.
    """
    for name, value in (
        ("flops", flops),
        ("hours", hours),
        ("dollars", dollars),
        ("gpus", gpus),
        ("mfu", mfu),
        ("price", price),
    ):
        check_positive(name, value)
    given = [n for n, v in (("flops", flops), ("hours", hours), ("dollars", dollars)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"budget: give one of flops, hours or dollars, not {' and '.join(given)}")
    if not given:
        return None
    if (hours is not None or dollars is not None) and device is None:
        raise ConfigError(f"{given[0]}: a budget in {given[0]} needs a device (e.g. --device h100); or give --flops")
    dev = lookup_device(device) if device is not None else None
    if dev is None:
        return Budget(flops=float(flops), gpus=gpus, mfu=mfu)
    price = dev.price if price is None else price
    if dollars is not None:
        hours = dollars / (price * gpus)
    if hours is None:  # FLOPs given: how long they take on the device
        hours = training_time(flops, dev, gpus, mfu).seconds / 3600
    return Budget(
        flops=flops_for(dev, hours, gpus, mfu),
        device=dev.name,
        gpus=gpus,
        mfu=mfu,
        hours=hours,
        dollars=hours * gpus * price,
        price=price,
    )
