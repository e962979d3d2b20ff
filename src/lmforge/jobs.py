"""The end-to-end jobs as Python users and the CLI call them, wired with what they borrow from
the floors above the engine.

:func:`pretrain` is :func:`lmforge.train.run.pretrain` with the inference functions it uses
passed in: the text samples at each evaluation (decoders) and the span objective's final greedy
check. Training sits below inference, so the engine and the job take these as arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from lmforge.train.config import RunConfig
from lmforge.train.engine import FitResult


def pretrain(
    cfg: RunConfig, resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print
) -> FitResult:
    """Prepare data, build the model and train it as ``cfg`` says (``lmforge train``)."""
    from lmforge.infer.fill import span_filling_metrics
    from lmforge.infer.generate import generate
    from lmforge.train.run import pretrain as run

    return run(cfg, resume=resume, overwrite=overwrite, log=log, generate=generate, fill_spans=span_filling_metrics)
