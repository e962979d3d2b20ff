"""Planner output faults: the inference-aware answer used everywhere, files into missing
directories, a collapsed fit, duplicate CSV columns, advice that is itself accepted, time from the
shape's own FLOPs, memory that does not fit one device, and bad numbers on the command line."""

import json
import re

import numpy as np
import pytest

from lmforge.accounting import GiB, estimate_memory
from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.hardware import lookup_device
from lmforge.plan import allocate, fit
from lmforge.plan.allocate import deepseek_batch_tokens, deepseek_learning_rate
from lmforge.plan.laws import ParametricLaw
from lmforge.plan.runs import Runs


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err and "usage" not in err, err
    return err


def test_inference_aware_answer_is_used_everywhere(monkeypatch, tmp_path):
    a = allocate(flops=1e22, law="epoch", inference_tokens=2e13, device="h100")
    i = a.inference
    assert a.objective == "inference-aware"
    assert (a.params, a.tokens) == (i.params, i.train_tokens) and a.loss == pytest.approx(i.target_loss)
    assert a.train_flops == pytest.approx(i.train_flops) and a.train_flops > a.budget.flops
    assert a.shape_params.total == pytest.approx(i.params, rel=0.15)  # the shape of the inference-aware model
    assert abs(a.shape_params.total - i.params) < abs(a.shape_params.total - a.compute_optimal["params"])
    assert a.batch_tokens == pytest.approx(deepseek_batch_tokens(i.train_flops))
    assert a.learning_rate == pytest.approx(deepseek_learning_rate(i.train_flops))
    assert a.memory[0].total == pytest.approx(estimate_memory(a.shape, 1, a.seq_len).total)
    assert a.time.flops == pytest.approx(a.shape_tokens * a.shape_flops_per_token["palm"])
    assert a.shape_tokens == pytest.approx(i.train_flops / (6 * a.shape_params.total))
    text = a.summary()
    assert "\ncompute-optimal:" not in text and "inference-aware (Sardana et al." in text
    assert "compute-optimal at the budget, for comparison" in text
    assert json.loads(json.dumps(a.to_dict()))["objective"] == "inference-aware"

    from lmforge.plan import plots

    stars = []

    def capture(fig, path):  # the star of the plot: where the chosen model sits
        stars.extend(
            (ln.get_xdata()[0], ln.get_ydata()[0]) for ax in fig.axes for ln in ax.lines if ln.get_marker() == "*"
        )
        fig.clf()
        return path

    monkeypatch.setattr(plots, "_save", capture)
    plots.plot_allocation(a, tmp_path / "p.png")
    assert stars == [(pytest.approx(i.params), pytest.approx(i.target_loss))]


def test_plot_and_out_into_missing_directories(tmp_path, capsys):
    png = tmp_path / "new" / "dir" / "plan.png"
    assert main(["plan", "--flops", "1e21", "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000 and "compute-optimal" in capsys.readouterr().out
    runs = tmp_path / "runs.csv"
    assert (
        main(
            [
                "fit",
                str(runs),
                "--synthetic",
                "--out",
                str(tmp_path / "a" / "law.json"),
                "--plot",
                str(tmp_path / "b" / "fit.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "a" / "law.json").is_file() and (tmp_path / "b" / "fit.png").is_file()
    capsys.readouterr()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["plan", "--flops", "1e21", "--plot", str(blocker / "plan.png")]) == 2
    out = capsys.readouterr()
    assert "compute-optimal" in out.out  # the plan is printed, then one line about the plot
    assert out.err.startswith("error: ") and "cannot write the plot" in out.err and out.err.count("\n") == 1
    assert main(["fit", str(runs), "--out", str(blocker / "law.json")]) == 2
    out = capsys.readouterr()
    assert "Approach 3" in out.out and "cannot write the fitted law" in out.err and out.err.count("\n") == 1


def test_a_fit_that_collapses_to_e_zero_warns(capsys):
    """Over-trained runs far from the frontier (Sardana et al.) let E run to 0."""
    law = ParametricLaw("zero", 1e-9, 400.0, 1500.0, 0.33, 0.30)
    rng = np.random.default_rng(0)
    n = np.geomspace(1e7, 3e8, 12).repeat(3)
    d = n * np.tile([200.0, 1000.0, 5000.0], 12)  # 200-5000 tokens per parameter
    loss = law.loss(n, d) * np.exp(rng.normal(0, 0.002, n.size))
    result = fit(Runs(n, d, loss, 6 * n * d), approach=3)
    assert result.estimates["E"] < 0.05 * loss.min()
    assert any("irreducible loss E collapsed" in w for w in result.warnings)
    assert "warning: the irreducible loss E collapsed" in result.summary()
    planned = allocate(flops=1e21, law=result.law)
    assert any("irreducible loss E is" in w for w in planned.warnings)


@pytest.mark.parametrize(
    "header", ["Params,tokens,loss,params", "params,tokens,loss,params", "params,Loss,tokens,loss "]
)
def test_duplicate_csv_columns_are_refused(header, tmp_path, capsys):
    path = tmp_path / "runs.csv"
    path.write_text(header + "\n" + "\n".join("1e6,2e7,3.1,1e6" for _ in range(6)) + "\n")
    with pytest.raises(DataError, match="are the same column"):
        fit(path)
    assert main(["fit", str(path)]) == 2
    one_line_error(capsys)
    with pytest.raises(DataError, match="'params' and 'Params'"):
        fit({"params": [1e6] * 6, "Params": [2e6] * 6, "tokens": [2e7] * 6, "loss": [3.0] * 6})


@pytest.mark.parametrize(
    "law, vocab",
    [("chinchilla", None), ("epoch", None), ("epoch", 50257), ("chinchilla-table3", None), ("kaplan", 8000)],
)
def test_the_least_budget_advised_is_itself_accepted(law, vocab):
    with pytest.raises(ConfigError) as e:
        allocate(flops=1e9, law=law, vocab_size=vocab)
    advised = float(re.search(r"give at least ([0-9.e+-]+) FLOPs", str(e.value)).group(1))
    a = allocate(flops=advised, law=law, vocab_size=vocab)  # was refused: the advice rounded down
    assert a.params > 0
    with pytest.raises(ConfigError, match="too small"):
        allocate(flops=advised / 1.2, law=law, vocab_size=vocab)


def test_time_and_cost_use_the_shapes_own_flops():
    a = allocate(flops=1.1e24, law="chinchilla", device="h100", gpus=1024)
    palm, six_n = a.shape_flops_per_token["palm"], a.shape_flops_per_token["6n"]
    assert palm > six_n * 1.03  # attention costs several percent at this scale
    assert a.time.flops == pytest.approx(a.shape_tokens * palm)
    peak = lookup_device("h100").peak_flops
    assert a.time.seconds == pytest.approx(a.shape_tokens * palm / (1024 * peak * 0.4))
    assert a.time.dollars == pytest.approx(a.time.device_hours * 3.0)


def test_memory_that_exceeds_the_device_gets_a_device_count_and_accumulation():
    a = allocate(flops=6 * 34e9 * 700e9, law="epoch", device="h100")  # about a 34B model
    assert a.memory[0].total > 80 * GiB
    advice = [w for w in a.warnings if w.startswith("memory:")]
    assert len(advice) == 1 and "shard with FSDP over" in advice[0] and "accumulate" in advice[0]
    n = int(re.search(r"over (\d+) devices", advice[0]).group(1))
    accum = int(re.search(r"accumulate (\d+) micro-batches", advice[0]).group(1))
    fits = [estimate_memory(a.shape, 1, a.seq_len, n, "fsdp", ckpt).total <= 0.9 * 80 * GiB for ckpt in (False, True)]
    assert any(fits) and n * accum >= a.batch_sequences
    assert not any(
        estimate_memory(a.shape, 1, a.seq_len, n // 2, "fsdp", ckpt).total <= 0.9 * 80 * GiB for ckpt in (False, True)
    )  # the least power of two that fits
    with_them = allocate(flops=6 * 34e9 * 700e9, law="epoch", device="h100", gpus=n)
    left = [w for w in with_them.warnings if w.startswith("memory:")]
    assert bool(left) == (not fits[0])  # enough devices: at most checkpointing is left to turn on
    assert all("turn on activation checkpointing" in w and "FSDP over" not in w for w in left)
    assert any(w.startswith("memory:") and "80 GiB" in w for w in allocate(flops=6 * 34e9 * 700e9).warnings)


@pytest.mark.parametrize(
    "flag, value, field",
    [
        ("--flops", "-1e21", "flops"),
        ("--flops", "-inf", "flops"),
        ("--flops", "nan", "flops"),
        ("--hours", "-10", "hours"),
        ("--gpus", "-8", "gpus"),
        ("--mfu", "-0.4", "mfu"),
        ("--inference-tokens", "-1e12", "inference_tokens"),
        ("--available-tokens", "-5", "available_tokens"),
        ("--vocab-size", "-3", "vocab_size"),
        ("--seq-len", "-1", "seq_len"),
        ("--head-dim", "-64", "head_dim"),
        ("--micro-batch", "0", "micro_batch"),
        ("--target-loss", "-2", "target_loss"),
    ],
)
def test_negative_and_nonfinite_numbers_are_one_line_errors(flag, value, field, capsys):
    argv = ["plan", flag, value] + ([] if flag == "--flops" else ["--flops", "1e21"])
    if flag in ("--hours",):
        argv = ["plan", "--device", "h100", flag, value]
    if flag == "--target-loss":
        argv = ["plan", flag, value]
    assert main(argv) == 2
    assert one_line_error(capsys).startswith(f"error: {field}:")


@pytest.mark.parametrize("value", ["abc", "1e21x", ""])
def test_non_numbers_are_one_line_errors(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--flops", value])
    assert e.value.code == 2
    assert "invalid float value" in one_line_error(capsys)
