"""Preemption: SIGINT / SIGTERM end a run at the next step boundary with a checkpoint.

The handler only records the signal; the loop asks :meth:`StopSignals.agreed` after each step, and
all ranks of a distributed run agree (one rank's signal stops them all at the same step), so the
checkpoint is whole. A second Ctrl-C aborts at once, without a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import torch

from lmforge.train import distributed as D


class StopSignals:
    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.received: str | None = None  # the signal's name, once one came

    def install(self) -> Callable[[], None]:
        """Handle SIGINT and SIGTERM (in the main thread only); returns the function that restores
        the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self.received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.received = signal.Signals(signum).name
            self.log(
                f"{self.received} received: finishing the current step, then checkpointing "
                "(press Ctrl-C again to abort without a checkpoint)"
            )

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    def agreed(self, device: torch.device, distributed: bool) -> bool:
        """Whether any rank received a signal (a collective when ``distributed``)."""
        if not distributed:
            return self.received is not None
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        return bool(D.all_reduce_sum(flag).item() > 0)
