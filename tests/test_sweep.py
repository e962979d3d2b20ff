"""A miniature IsoFLOP sweep on the bundled corpus, end to end: train, collect, fit, allocate, resume."""

import csv

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
    return RunConfig.from_preset("tiny-gpt").override({
        "data.source": str(tmp_path / "plays.txt"), "data.path": str(tmp_path / "data"), "data.val_fraction": "0.05",
        "data.seq_len": "16", "train.batch_size": "64",
        "train.eval_batches": "2", "model.max_positions": "16"})


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
    result = sweep(base, [1e10, 3e10], out, sizes=3, spread=3.0, bootstrap=5, log=lambda m: None)
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == len(result.runs) >= 5
    assert all(float(r["loss"]) > 0 for r in rows)
    assert (out / "fit.png").is_file() and (out / "allocation.json").is_file()
    # the CSV re-fits to the same law
    again = fit(out / "runs.csv", approach=3)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert again.estimates[k] == pytest.approx(result.fits[3].estimates[k], rel=1e-9)
    # resumable: a second call trains nothing more
    seen = []
    sweep(base, [1e10, 3e10], out, sizes=3, spread=3.0, bootstrap=0, plot=False, log=seen.append)
    assert sum(m.endswith("finished earlier, skipped") for m in seen) == len(rows)
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == len(rows)
