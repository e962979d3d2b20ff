"""Scaling-law forms, presets and the compute-optimal frontier."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from lmforge.errors import ConfigError
from lmforge.plan.laws import (
    CHINCHILLA_TABLE3,
    LAWS,
    PF_DAY,
    KaplanLaw,
    ParametricLaw,
    PowerLawFrontier,
    load_law,
    tokens_per_param,
)


@pytest.mark.parametrize("name", ["chinchilla", "epoch", "sardana"])
@pytest.mark.parametrize("flops", [1e18, 1e21, 1e24])
def test_closed_form_equals_numerical_minimum_on_the_compute_line(name, flops):
    law = LAWS[name]
    # minimise L(N, C / 6N) over log N
    res = minimize_scalar(
        lambda x: law.loss(math.exp(x), flops / (6 * math.exp(x))),
        bounds=(math.log(1e3), math.log(1e15)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    n, d = law.optimal(flops)
    assert 6 * n * d == pytest.approx(flops)
    assert n == pytest.approx(math.exp(res.x), rel=1e-4)
    assert law.loss(n, d) <= res.fun + 1e-12


def test_frontier_exponents_and_inverse():
    law = LAWS["epoch"]
    assert law.a + law.b == pytest.approx(1)
    assert law.a == pytest.approx(0.3658 / (0.3478 + 0.3658))
    n1, _ = law.optimal(1e20)
    n2, _ = law.optimal(1e22)
    assert math.log(n2 / n1) / math.log(100) == pytest.approx(law.a)
    assert 18 < tokens_per_param(law, 1e21) < 25  # Epoch's refit: about 20 tokens per parameter
    c = law.compute_for_loss(2.3)
    assert law.optimal_loss(c) == pytest.approx(2.3)
    with pytest.raises(ConfigError, match="irreducible"):
        law.compute_for_loss(1.5)


def test_vectorised_optimal():
    n, d = LAWS["chinchilla"].optimal(np.array([1e20, 1e21]))
    assert n.shape == d.shape == (2,)


def test_table3_frontier_reproduces_chinchilla_table3():
    law = LAWS["chinchilla-table3"]
    for params, flops, tokens in CHINCHILLA_TABLE3:
        n, d = law.optimal(flops)
        assert n == pytest.approx(params, rel=0.05)
        assert d == pytest.approx(tokens, rel=0.05)
    assert law.a == pytest.approx(0.50, abs=0.01)  # Approach 1: a = b = 0.50


def test_power_law_fit_recovers_a_line():
    c = np.geomspace(1e18, 1e24, 7)
    law = PowerLawFrontier.from_points("x", c, 0.1 * c**0.5)
    assert law.a == pytest.approx(0.5) and law.k == pytest.approx(0.1)
    assert law.loss(1e9, 1e10) is None


def test_kaplan_forms():
    law = LAWS["kaplan"]
    assert isinstance(law, KaplanLaw) and law.counts == "non_embedding"
    n, d = law.optimal(PF_DAY)
    assert n == pytest.approx(1.3e9) and 6 * n * d == pytest.approx(PF_DAY)
    n2, _ = law.optimal(10 * PF_DAY)
    assert n2 / n == pytest.approx(10**0.73)
    assert law.loss_n(8.8e13) == pytest.approx(1.0)
    assert law.loss_d(5.4e13) == pytest.approx(1.0)
    assert law.loss(1e9, 1e12) < law.loss(1e9, 1e10)  # more data, lower loss


def test_load_law_from_presets_dicts_and_files(tmp_path):
    assert load_law("Epoch") is LAWS["epoch"]
    for law in LAWS.values():
        assert load_law(law.to_dict()) == law
    path = tmp_path / "law.json"
    path.write_text(json.dumps({"approach": 3, "law": LAWS["sardana"].to_dict()}))
    assert load_law(path) == LAWS["sardana"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "neither a preset"),
        ("{not json", "not a JSON law"),
        ('{"kind": "mystery"}', "unknown law kind"),
        ('{"kind": "parametric", "name": "x", "E": 1}', "malformed"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_law_errors(tmp_path, content, message):
    path = tmp_path / "law.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_law(path)


def test_parametric_law_needs_positive_exponents():
    with pytest.raises(ConfigError, match="alpha"):
        ParametricLaw("bad", E=1.7, A=400, B=400, alpha=-0.1, beta=0.3)
    with pytest.raises(ConfigError, match="positive number of FLOPs"):
        LAWS["chinchilla"].optimal(-1)


def test_the_shipped_law_is_what_its_runs_give():
    """lmforge's own law ships with its provenance: the runs CSV of the sweep that made it refits
    (Approach 3, the same method) to the same constants, and it records the run it holds for."""
    from pathlib import Path

    from lmforge.plan import fit
    from lmforge.plan.laws import FITTED_DIR, LAW_NOTES, fitted_on

    shipped = json.loads((FITTED_DIR / "shakespeare-gpt.json").read_text())
    runs = Path(__file__).resolve().parents[1] / shipped["provenance"]["runs"]
    law = load_law("shakespeare-gpt")
    again = fit(runs, approach=3).law
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(again, k) == pytest.approx(getattr(law, k), rel=1e-6)
    assert law.name == "shakespeare-gpt" and "sweep" in LAW_NOTES["shakespeare-gpt"]
    assert fitted_on("shakespeare-gpt")["tokenizer"] == "bpe" and fitted_on("epoch") is None
