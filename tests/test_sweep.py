"""A miniature IsoFLOP sweep on the bundled corpus, end to end: train, collect, fit, allocate, resume."""

import csv
import json

import pytest

from lmforge.config import ModelConfig
from lmforge.data.corpus import shakespeare
from lmforge.errors import ConfigError
from lmforge.models import build_model
from lmforge.plan import fit
from lmforge.plan.sweep import plan_runs, sweep, with_dataset
from lmforge.train import RunConfig


def _base(tmp_path):
    # a small corpus (two plays) keeps the final whole-split evaluations short
    text = "\n".join(doc.text for doc in shakespeare("train")[:2])
    (tmp_path / "plays.txt").write_text(text, encoding="utf-8")
    return RunConfig.from_preset("tiny-gpt").override(
        {
            "data.source": str(tmp_path / "plays.txt"),
            "data.path": str(tmp_path / "data"),
            "data.val_fraction": "0.05",
            "data.seq_len": "16",
            "train.batch_size": "64",
            "train.eval_batches": "2",
            "model.max_positions": "16",
        }
    )


def test_plan_runs_matches_budgets(tmp_path):
    base = with_dataset(_base(tmp_path), log=lambda m: None)
    runs = plan_runs(base, [1e10, 3e10], sizes=3, spread=3.0)
    assert len({r.budget for r in runs}) == 2
    for r in runs:  # each run spends its budget: 6 N D within one step's tokens, N the built model's count
        assert abs(6 * r.params * r.tokens - r.budget) <= 6 * r.params * 64 * 16
        model = build_model(ModelConfig.from_dict(r.model))
        assert sum(p.numel() for p in model.parameters()) == r.params
    with pytest.raises(ConfigError, match="steps"):
        plan_runs(base, [1e5])


@pytest.mark.slow
def test_miniature_sweep_end_to_end(tmp_path):
    base = _base(tmp_path)
    out = tmp_path / "sweep"
    result = sweep(base, [1e10, 3e10], out, sizes=3, spread=3.0, bootstrap=5, jobs=2, log=lambda m: None)
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == len(result.runs) >= 5
    assert all(float(r["loss"]) > 0 for r in rows)
    assert (out / "fit.png").is_file() and (out / "allocation.json").is_file()
    # the law file records the run it holds for: `train --budget --law` plans with its batch and lr
    fitted = json.loads((out / "law-approach3.json").read_text())["fitted_on"]
    assert fitted["batch_size"] == base.train.batch_size and fitted["lr"] == base.train.lr
    assert fitted["seq_len"] == base.data.seq_len and fitted["objective"] == "causal"
    # the CSV re-fits to the same law
    again = fit(out / "runs.csv", approach=3)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert again.estimates[k] == pytest.approx(result.fits[3].estimates[k], rel=1e-9)
    # resumable: a second call trains nothing more
    seen = []
    sweep(base, [1e10, 3e10], out, sizes=3, spread=3.0, bootstrap=0, plot=False, log=seen.append)
    assert sum(m.endswith("finished earlier, skipped") for m in seen) == len(rows)
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == len(rows)


def test_sizes_follow_the_runs(tmp_path, monkeypatch):
    """The sizes adapt: a budget whose lowest loss sits at an edge gets sizes beyond it, and the next
    budget is centred on the last one's best size. Losses come from a known law (no training), so
    the plan can be checked: every IsoFLOP curve ends with an interior minimum, and a second call
    replays the same plan from runs.csv without training anything."""
    import lmforge.plan.sweep as S
    from lmforge.accounting import count_params
    from lmforge.plan.laws import ParametricLaw

    law = ParametricLaw("truth", 1.7, 400.0, 400.0, 0.34, 0.28)  # optimum far below 20 tokens/param here
    calls = []

    def fake_train(cfg_dict, resume):
        cfg = RunConfig.from_dict(cfg_dict)
        n = count_params(cfg.model).total
        d = cfg.train.max_steps * cfg.train.batch_size * cfg.data.seq_len
        calls.append(cfg.name)
        return float(law.loss(n, d)), None

    monkeypatch.setattr(S, "_train_one", fake_train)
    base = _base(tmp_path).override({"model.n_head": "4"})  # head size 16: shapes from a few thousand params
    budgets = [3e11, 3e12]
    result = sweep(
        base,
        budgets,
        tmp_path / "sw",
        sizes=3,
        spread=2.0,
        tokens_per_param=20,
        extend=3,
        bootstrap=0,
        plot=False,
        log=lambda m: None,
    )
    rows = result.runs
    for budget in budgets:
        mine = sorted((r for r in rows if abs(float(r["flops"]) / budget - 1) < 0.05), key=lambda r: int(r["params"]))
        losses = [float(r["loss"]) for r in mine]
        best = losses.index(min(losses))
        assert 0 < best < len(losses) - 1, (budget, losses)
    assert len(calls) > 6  # the first budget needed extra sizes
    calls.clear()
    sweep(
        base,
        budgets,
        tmp_path / "sw",
        sizes=3,
        spread=2.0,
        tokens_per_param=20,
        extend=3,
        bootstrap=0,
        plot=False,
        log=lambda m: None,
    )
    assert calls == []
