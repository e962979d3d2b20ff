"""The planner: scaling laws, fitting them to runs, and compute-optimal allocation.

    import lmforge as lf
    law = lf.plan.fit("runs.csv")                      # Approach 3; approach=2 (IsoFLOP) or 1 (envelope)
    lf.plan.allocate(flops=1e21, law="chinchilla")     # N*, D*, loss, shape, batch, cost
    lf.plan.allocate(target_loss=1.947, inference_tokens=2e12, law="sardana")
    lf.plan.allocate(hours=0.1, throughput=tp)         # time-optimal on a measured machine

Parameter, FLOP, memory and time accounting live one level down in :mod:`lmforge.accounting`.
"""

from lmforge.plan.allocate import Allocation, allocate, deepseek_batch_tokens, deepseek_learning_rate, isoflop_curve
from lmforge.plan.budget import Budget, resolve_budget
from lmforge.plan.fit import FitResult, fit, fit_envelope, fit_isoflop, fit_parametric
from lmforge.plan.laws import (
    CHINCHILLA_TABLE3,
    LAWS,
    KaplanLaw,
    Law,
    ParametricLaw,
    PowerLawFrontier,
    describe,
    load_law,
)
from lmforge.plan.runs import Runs, load_runs, synthetic_runs
from lmforge.plan.shapes import shape_for
from lmforge.plan.throughput import Throughput, ThroughputPoint
from lmforge.plan.variants import InferenceAware, inference_optimal, time_optimal

__all__ = [
    "Allocation",
    "Budget",
    "CHINCHILLA_TABLE3",
    "FitResult",
    "InferenceAware",
    "KaplanLaw",
    "LAWS",
    "Law",
    "ParametricLaw",
    "PowerLawFrontier",
    "Runs",
    "allocate",
    "deepseek_batch_tokens",
    "deepseek_learning_rate",
    "describe",
    "fit",
    "fit_envelope",
    "fit_isoflop",
    "fit_parametric",
    "inference_optimal",
    "isoflop_curve",
    "load_law",
    "load_runs",
    "synthetic_runs",
    "resolve_budget",
    "shape_for",
    "Throughput",
    "ThroughputPoint",
    "time_optimal",
]
