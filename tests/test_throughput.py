"""The throughput model (interpolation, the per-user cache) and time-optimal allocation on synthetic
throughput tables: a constant MFU gives the FLOP-optimal answer; MFU that rises with size moves the
time-optimal model above the FLOP-optimal one (and MFU that falls, below)."""

import json
import math

import numpy as np
import pytest

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.plan import LAWS, allocate, time_optimal
from lmforge.plan import throughput as T
from lmforge.plan.throughput import Throughput, ThroughputPoint, fixed_throughput

PEAK = 1e11


def point(n: float, mfu: float, label: str | None = None) -> ThroughputPoint:
    """A synthetic measurement of a model of n parameters costing 6n FLOPs per token."""
    return ThroughputPoint(label or f"n{n:g}", int(n), 6 * n, PEAK * mfu / (6 * n), mfu)


def table(*pairs) -> Throughput:
    return Throughput("cpu", "test machine", PEAK, [point(n, m) for n, m in pairs], source="synthetic")


def power_mfu(gamma: float, m0: float = 0.2, n0: float = 1e6):
    """tokens/s of MFU m0 (N / n0)^gamma and 6N FLOPs per token."""
    return lambda n: PEAK * m0 * (n / n0) ** gamma / (6 * n)


# ---- the throughput model ----------------------------------------------------------------------


def test_mfu_is_linear_in_log_params_and_flat_beyond_the_points():
    tp = table((1e4, 0.1), (1e6, 0.3))
    assert tp.mfu(1e5) == pytest.approx(0.2)  # half way in log N
    assert tp.mfu(1e3) == pytest.approx(0.1) and tp.mfu(1e8) == pytest.approx(0.3)
    assert tp.mfu(np.array([1e4, 1e6])) == pytest.approx([0.1, 0.3])
    assert tp.tokens_per_second(1e5, 6e5) == pytest.approx(PEAK * 0.2 / 6e5)
    assert tp.max_mfu == 0.3
    fixed = fixed_throughput(0.25, PEAK, "cpu", "m")
    assert fixed.mfu(10.0) == fixed.mfu(1e12) == 0.25 and "--mfu" in fixed.summary()
    again = Throughput.from_dict(json.loads(json.dumps(tp.to_dict())))
    assert again.mfu(3e4) == pytest.approx(tp.mfu(3e4)) and "n10000" in again.summary()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(points=[]), "no measured points"),
        (dict(points=[], fixed_mfu=1.5), "mfu"),
        (dict(peak_flops=0.0), "peak"),
        (dict(points=[ThroughputPoint("x", 10, 60.0, 0.0, 0.1)]), "non-positive"),
    ],
)
def test_bad_throughput_tables(kwargs, message):
    args = {**dict(device="cpu", machine="m", peak_flops=PEAK, points=[point(1e4, 0.1)]), **kwargs}
    with pytest.raises(ConfigError, match=message):
        Throughput(**args)


def test_cache_per_machine_and_device(tmp_path, monkeypatch):
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path))
    setting = {"seq_len": 32, "batch_size": 8}
    tp = Throughput("cpu", "host / cpu / 2 threads", PEAK, [point(1e4, 0.1, "a")], setting)
    path = T.store(tp, "2025-01-01")
    assert path.parent == tmp_path / "throughput" and path.is_file()
    got = T.load_cached("host / cpu / 2 threads", "cpu", setting)
    assert [p.label for p in got.points] == ["a"] and "cached in" in got.source and "2025-01-01" in got.source
    # other settings, machines and devices miss
    assert T.load_cached("host / cpu / 2 threads", "cpu", {**setting, "batch_size": 16}) is None
    assert T.load_cached("host / cpu / 1 thread", "cpu", setting) is None
    assert T.load_cached("host / cpu / 2 threads", "NVIDIA H100", setting) is None
    assert T.cache_path("a", "cpu") != T.cache_path("b", "cpu") != T.cache_path("a", "cuda")
    # more shapes merge into the entry; a new peak rescales the cached MFUs (tokens/s is what was measured)
    T.store(Throughput("cpu", tp.machine, 2 * PEAK, [point(1e6, 0.2, "b")], setting))
    got = T.load_cached(tp.machine, "cpu", setting)
    assert [p.label for p in got.points] == ["a", "b"] and got.peak_flops == 2 * PEAK
    assert got.points[0].mfu == pytest.approx(0.05)
    assert T.cached_peak(tp.machine, "cpu") == 2 * PEAK
    path.write_text("{not json")  # an unreadable cache is measured again, not an error
    assert T.load_cached(tp.machine, "cpu", setting) is None and T.cached_peak(tp.machine, "cpu") is None


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(T.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert T.cache_dir() == tmp_path / "lmforge"
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "x"))
    assert T.cache_dir() == tmp_path / "x"
    assert "thread" in T.machine_id(3) and T.machine_id().count(" / ") == 1


# ---- time-optimal allocation ---------------------------------------------------------------------


@pytest.mark.parametrize("law", ["chinchilla", "epoch"])
@pytest.mark.parametrize("seconds", [60.0, 3600.0])
def test_constant_mfu_reproduces_the_flop_optimal_answer(law, seconds):
    n, d = time_optimal(law, seconds, power_mfu(0.0, m0=0.3), 1e2, 1e12)
    n_c, d_c = LAWS[law].optimal(seconds * PEAK * 0.3)
    assert n == pytest.approx(n_c, rel=1e-5) and d == pytest.approx(d_c, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.6])
def test_rising_mfu_makes_the_time_optimal_model_larger(gamma):
    """MFU ~ N^gamma: at the optimum alpha A N^-alpha = (1 - gamma) beta B D^-beta (time_optimal's
    docstring), so the model is larger than the FLOP-optimal one of the FLOPs it trains with."""
    law, seconds = LAWS["chinchilla"], 600.0
    rate = power_mfu(gamma)
    n, d = time_optimal(law, seconds, rate, 1e2, 1e12)
    ratio = law.alpha * law.A * n**-law.alpha / (law.beta * law.B * d**-law.beta)
    assert ratio == pytest.approx(1 - gamma, rel=1e-3)
    n_c, d_c = law.optimal(6 * n * d)  # FLOP-optimal for the same FLOPs
    assert n > n_c and d < d_c and d / n < d_c / n_c
    assert law.loss(n, d) < law.loss(n_c, seconds * rate(n_c))  # and within the time, better than that size
    # also larger than the self-consistent FLOP-optimal size N_f = N_opt(T P m(N_f))
    n_f = 1e6
    for _ in range(200):
        n_f = law.optimal(seconds * rate(n_f) * 6 * n_f)[0]
    assert n > n_f


def test_falling_mfu_makes_it_smaller():
    law = LAWS["epoch"]
    n, d = time_optimal(law, 600.0, power_mfu(-0.2), 1e2, 1e12)
    assert n < law.optimal(6 * n * d)[0]


def test_time_optimal_needs_a_loss_model():
    with pytest.raises(ConfigError, match="loss model"):
        time_optimal("chinchilla-table3", 60.0, power_mfu(0.0), 1e2, 1e9)
    with pytest.raises(ConfigError, match="n_min"):
        time_optimal("chinchilla", 60.0, power_mfu(0.0), 1e9, 1e2)


TEMPLATE = ModelConfig.from_dict(
    dict(arch="decoder", vocab_size=2048, max_positions=128, n_layer=4, d_model=128, n_head=4)
)


def _allocate(tp, **kw):
    return allocate(template=TEMPLATE, head_dim=32, throughput=tp, law="chinchilla", **kw)


def test_allocate_for_wall_time_on_a_synthetic_machine():
    rising = table((1e5, 0.05), (1e6, 0.2), (1e7, 0.4))
    a = _allocate(rising, hours=5 / 60)
    assert a.objective == "time-optimal" and a.seconds == 300
    co = a.compute_optimal  # the FLOP-optimal model of the same FLOPs is smaller
    assert co["params"] < a.params and a.budget.flops == pytest.approx(6 * a.params * a.tokens)
    # the chosen shape trains for exactly the budget at its own measured rate
    assert a.time.seconds == pytest.approx(300) and a.time.mfu == pytest.approx(rising.mfu(a.shape_params.total))
    assert a.shape_tokens == pytest.approx(
        300 * rising.tokens_per_second(a.shape_params.total, a.shape_flops_per_token["palm"])
    )
    rows = {r["scale"]: r for r in a.frontier}  # same wall time for every size: the planned one is best
    assert rows[0.5]["loss"] > rows[1.0]["loss"] < rows[2.0]["loss"]
    assert rows[0.5]["mfu"] < rows[1.0]["mfu"] < rows[2.0]["mfu"]
    text = a.summary()
    for needle in ("5.0 min of training", "time-optimal:", "compute-optimal for the same", "frontier at 5.0 min"):
        assert needle in text
    assert json.loads(json.dumps(a.to_dict(), default=float))["objective"] == "time-optimal"
    # flat MFU: the answer moves down to about the FLOP-optimal size (attention and embeddings aside)
    flat = _allocate(table((1e5, 0.2), (1e7, 0.2)), hours=5 / 60)
    assert flat.params < a.params
    assert flat.params == pytest.approx(flat.compute_optimal["params"], rel=0.2)


def test_allocate_flops_on_a_measured_machine():
    tp = table((1e5, 0.05), (1e7, 0.4))
    a = _allocate(tp, flops=1e13)
    n, _ = LAWS["chinchilla"].optimal(1e13)
    assert a.objective == "compute-optimal" and a.params == pytest.approx(n)
    assert a.time.seconds == pytest.approx(
        a.shape_tokens / tp.tokens_per_second(a.shape_params.total, a.shape_flops_per_token["palm"])
    )
    assert a.budget.hours == pytest.approx(a.time.seconds / 3600)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hours=1.0, flops=1e15), "one of hours"),
        (dict(), "one of hours"),
        (dict(hours=1.0, device="h100"), "device"),
        (dict(hours=1.0, inference_tokens=1e9), "inference_tokens"),
        (dict(hours=1.0, gpus=2), "gpus"),
        (dict(hours=1e-9), "too short"),
    ],
)
def test_bad_time_budgets(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _allocate(table((1e5, 0.1), (1e7, 0.4)), **kwargs)


def test_time_optimal_evaluates_a_bounded_number_of_sizes():
    # a grid in log N, then Brent's method in one grid interval
    calls = []

    def rate(n):
        calls.append(n)
        return power_mfu(0.2)(n)

    time_optimal("chinchilla", 60.0, rate, 1e3, 1e9)
    assert len(calls) < 400 and all(math.isfinite(c) for c in calls)
