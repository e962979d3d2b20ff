"""``lmforge train --budget``: budget -> plan -> run config at a tiny budget, the measured and
cached throughput, and the whole command end to end (plan printed, run trained, achieved loss
against predicted). No timing is asserted: only that the pieces are consistent."""

import json

import pytest
import torch

from lmforge import jobs
from lmforge.accounting import count_params
from lmforge.cli.main import main
from lmforge.cli.train import parse_duration
from lmforge.errors import ConfigError
from lmforge.plan import throughput as T
from lmforge.train import RunConfig

TEXT = "FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\nALL:\nSpeak, speak.\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    (root / "corpus").mkdir()
    for i in range(5):
        (root / "corpus" / f"part{i}.txt").write_text(TEXT * (20 + i), encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A cache of this test's own, and the thread count restored."""
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "cache"))
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def base(corpus) -> RunConfig:
    return RunConfig.from_preset("tiny-gpt").override(
        {
            "data.source": str(corpus / "corpus"),
            "data.path": str(corpus / "data"),
            "train.threads": "1",
            "train.peak_flops": "1e11",  # no timed matmul for the peak
        }
    )


def quiet(msg):
    pass


def test_budget_to_plan_to_config(corpus, tmp_path):
    plan = jobs.plan_budget(base(corpus).replace(out_dir=str(tmp_path / "run")), hours=3 / 3600, mfu=0.3, log=quiet)
    a, cfg = plan.allocation, plan.config
    assert a.objective == "time-optimal" and a.throughput.fixed_mfu == 0.3 and a.seconds == 3
    # the run is the plan: its shape, batch, learning rate, and as many steps as the shape's tokens fill
    assert cfg.model.to_dict() == a.shape.to_dict()
    assert count_params(cfg.model).total == a.shape_params.total
    assert cfg.train.batch_size == a.batch_sequences and cfg.train.lr == pytest.approx(a.learning_rate)
    tokens = cfg.train.max_steps * cfg.train.batch_size * cfg.data.seq_len
    assert tokens <= a.shape_tokens < tokens + cfg.train.batch_size * cfg.data.seq_len
    assert cfg.train.max_steps >= jobs.MIN_STEPS and cfg.train.eval_every == cfg.train.checkpoint_every
    assert cfg.train.max_steps <= jobs.EVALS * cfg.train.eval_every < cfg.train.max_steps + jobs.EVALS
    assert 1 <= cfg.train.warmup_steps <= max(1, cfg.train.max_steps // 10)
    assert cfg.train.peak_flops == 1e11 and cfg.model.vocab_size < 256  # the tokenizer's vocabulary
    assert cfg.data.path == str(corpus / "data")
    text = plan.summary()
    for needle in (
        "time-optimal:",
        "frontier at 3 s",
        "law provenance",
        "planner's default",
        f"{cfg.train.max_steps} steps",
    ):
        assert needle in text
    # the user's batch and learning rate replace the plan's; max_steps follows the batch
    given = jobs.plan_budget(base(corpus), hours=3 / 3600, mfu=0.3, batch_size=16, lr=1e-3, log=quiet)
    assert given.config.train.batch_size == 16 and given.config.train.lr == 1e-3
    assert given.config.train.max_steps * 16 * 32 <= given.allocation.shape_tokens
    # a FLOP budget: the compute-optimal model, its time from the throughput
    flops = jobs.plan_budget(base(corpus), flops=3e10, mfu=0.3, log=quiet)
    assert flops.allocation.objective == "compute-optimal" and flops.allocation.time.seconds > 0


def test_a_law_from_a_file(corpus, tmp_path):
    from lmforge.plan.laws import ParametricLaw

    path = tmp_path / "law.json"
    path.write_text(json.dumps({"law": ParametricLaw("mine", E=1.0, A=50.0, B=500.0, alpha=0.4, beta=0.4).to_dict()}))
    plan = jobs.plan_budget(base(corpus), hours=3 / 3600, mfu=0.3, law=str(path), log=quiet)
    assert plan.allocation.law.name == "mine" and str(path) in plan.law_note
    t = plan.config.train
    assert plan.predicted_loss == pytest.approx(
        plan.allocation.law.loss(plan.allocation.shape_params.total, t.max_steps * t.batch_size * 32)
    )
    preset = jobs.plan_budget(base(corpus), hours=3 / 3600, mfu=0.3, law="epoch", log=quiet)
    assert "the preset 'epoch'" in preset.law_note


def test_a_sweeps_law_brings_its_recipe_and_its_units(corpus, tmp_path):
    """A law written by `lmforge sweep` records the run it was fitted on: the plan trains with that
    batch and learning rate, and warns when this run's data or tokenizer differ from it."""
    from lmforge.plan.laws import ParametricLaw
    from lmforge.plan.sweep import with_dataset

    law = ParametricLaw("mine", E=1.0, A=50.0, B=500.0, alpha=0.4, beta=0.4).to_dict()
    cfg = base(corpus)
    fields = jobs._run_fields(with_dataset(cfg, quiet))
    path = tmp_path / "law.json"
    path.write_text(json.dumps({"law": law, "fitted_on": {**fields, "batch_size": 6, "lr": 7e-3}}))
    plan = jobs.plan_budget(cfg, hours=3 / 3600, mfu=0.3, law=str(path), log=quiet)
    assert plan.config.train.batch_size == 6 and plan.config.train.lr == 7e-3
    assert "batch 6 and peak lr 0.007" in plan.law_note and "WARNING" not in plan.law_note
    path.write_text(json.dumps({"law": law, "fitted_on": {**fields, "tokenizer": "bpe", "batch_size": 6, "lr": 7e-3}}))
    other = jobs.plan_budget(cfg, hours=3 / 3600, mfu=0.3, law=str(path), batch_size=8, log=quiet)
    assert "WARNING: fitted on tokenizer 'bpe'" in other.law_note and other.config.train.batch_size == 8


def test_the_shipped_law_is_the_default_for_its_own_run():
    """lmforge's own law (fitted on the bundled corpus with shakespeare-gpt's recipe) is the default
    for that run, and the published default for a run it was not measured on."""
    from lmforge.plan.laws import LAWS, fitted_on

    gpt = RunConfig.from_preset("shakespeare-gpt")
    gpt = gpt.replace(model={**gpt.model.to_dict(), "vocab_size": 2048})  # as its tokenizer sizes it
    assert jobs.default_law(gpt) == "shakespeare-gpt" and "shakespeare-gpt" in LAWS
    fitted = fitted_on("shakespeare-gpt")
    assert fitted["batch_size"] == gpt.train.batch_size and fitted["lr"] == gpt.train.lr
    assert jobs.default_law(gpt.replace(data={**gpt.data.to_dict(), "seq_len": 64})) == jobs.FALLBACK_LAW


def test_scale_trains_another_size_for_the_same_time(corpus):
    plans = {s: jobs.plan_budget(base(corpus), hours=6 / 3600, mfu=0.3, scale=s, log=quiet) for s in (0.5, 1.0, 2.0)}
    params = {s: count_params(p.config.model).total for s, p in plans.items()}
    steps = {s: p.config.train.max_steps for s, p in plans.items()}
    assert params[0.5] < params[1.0] < params[2.0] and steps[0.5] > steps[1.0] > steps[2.0]
    assert all(p.allocation.params == plans[1.0].allocation.params for p in plans.values())  # one plan, resized
    assert "2x it" in plans[2.0].summary() and all(p.predicted_loss > 0 for p in plans.values())


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-t5"])
def test_budget_plans_and_trains_encoders_and_encoder_decoders(corpus, preset, tmp_path):
    cfg = (
        RunConfig.from_preset(preset)
        .override(
            {
                "data.source": str(corpus / "corpus"),
                "data.path": str(corpus / f"data-{preset}"),
                "train.threads": "1",
                "train.peak_flops": "1e11",
                "train.progress": "false",
                "data.val_fraction": "0.4",  # two held-out documents: NSP draws its random B from another one
            }
        )
        .replace(out_dir=str(tmp_path / "run"))
    )
    plan = jobs.plan_budget(cfg, hours=3 / 3600, mfu=0.3, log=quiet)
    assert plan.config.model.arch == cfg.model.arch and plan.config.train.max_steps >= jobs.MIN_STEPS
    per_sequence = plan.tokens_per_step / plan.config.train.batch_size
    if cfg.model.arch == "encoder-decoder":  # source and target positions, as the engine counts them
        assert cfg.data.seq_len < per_sequence < 2 * cfg.data.seq_len
    else:
        assert per_sequence == cfg.data.seq_len
    result = jobs.train_budget(plan, log=quiet)
    assert result.fit.step == plan.config.train.max_steps and result.achieved_loss > 0
    # the planned tokens are the tokens the engine trained on
    assert result.fit.tokens == pytest.approx(plan.config.train.max_steps * plan.tokens_per_step, rel=0.05)
    assert (tmp_path / "run" / jobs.BUDGET_FILE).is_file()


def test_plan_budget_refusals(corpus):
    with pytest.raises(ConfigError, match="too small|larger budget"):
        jobs.plan_budget(base(corpus), flops=1e8, mfu=0.3, log=quiet)
    with pytest.raises(ConfigError, match="larger budget"):  # a model, but fewer than ten steps of it
        jobs.plan_budget(base(corpus), hours=3 / 3600, mfu=0.3, batch_size=10_000, log=quiet)
    with pytest.raises(ConfigError, match="one of"):
        jobs.plan_budget(base(corpus), log=quiet)
    with pytest.raises(ConfigError, match="scale"):
        jobs.plan_budget(base(corpus), hours=3 / 3600, mfu=0.3, scale=0.0, log=quiet)
    with pytest.raises(ConfigError, match="loss model"):
        jobs.plan_budget(base(corpus), hours=1 / 3600, mfu=0.3, law="chinchilla-table3", log=quiet)


def test_throughput_is_measured_once_then_cached(corpus, monkeypatch):
    seen = []
    plan = jobs.plan_budget(base(corpus), hours=2 / 3600, log=seen.append)
    tp = plan.allocation.throughput
    assert tp.fixed_mfu is None and len(tp.points) >= 3 and "cached in" in tp.source
    assert any("measuring the throughput" in m for m in seen)
    assert all(p.steps >= jobs.MEASURE_MIN_STEPS and 0 < p.mfu for p in tp.points)
    labels = {p.label for p in tp.points}
    assert f"L{plan.config.model.n_layer}-d{plan.config.model.d_model}" in labels or len(labels) >= 3
    files = list((T.cache_dir() / "throughput").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["entries"][0]["points"]

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(jobs, "measure_throughput", no_measuring)
    again = jobs.plan_budget(base(corpus), hours=2 / 3600, log=quiet)
    assert again.config.model.to_dict() == plan.config.model.to_dict()
    with pytest.raises(AssertionError, match="measured again"):  # unless asked to
        jobs.plan_budget(base(corpus), hours=2 / 3600, remeasure=True, log=quiet)


def test_measure_throughput_uses_the_engine_step(corpus):
    from lmforge.plan.shapes import shape_for
    from lmforge.plan.sweep import with_dataset

    cfg = with_dataset(base(corpus), quiet)
    shapes = [shape_for(n, cfg.model, head_dim=cfg.model.head_dim) for n in (5e3, 5e4)]
    tp = jobs.measure_throughput(cfg, shapes, 8, quiet, seconds=0.0)
    assert [p.params for p in tp.points] == sorted(count_params(s).total for s in shapes)
    for p in tp.points:
        assert p.steps == jobs.MEASURE_MIN_STEPS and p.mfu == pytest.approx(p.tokens_per_s * p.flops_per_token / 1e11)
    assert tp.setting["batch_size"] == 8 and tp.setting["seq_len"] == 32 and tp.device == "cpu"


def test_train_budget_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--preset",
            "tiny-gpt",
            "--budget",
            "2s",
            "--out",
            str(out),
            "--data.source",
            str(corpus / "corpus"),
            "--data.path",
            str(corpus / "data"),
            "--train.threads",
            "1",
            "--train.peak_flops",
            "1e11",
            "--train.sample_tokens",
            "0",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    plan_at, done_at = text.index("time-optimal:"), text.index("held-out loss: achieved")
    assert plan_at < text.index("done:") < done_at  # the plan before training, the comparison after
    for needle in ("frontier at 2 s", "N / N*", "law provenance", "throughput model", "predicted", "budget run:"):
        assert needle in text
    record = json.loads((out / "budget.json").read_text())
    assert record["achieved_loss"] > 0 and record["predicted_loss_at_trained_tokens"] > 0
    assert record["steps"] == record["config"]["train"]["max_steps"]
    assert RunConfig.from_file(out / "config.yaml").train.max_steps == record["steps"]  # resumable as any run


def test_print_config_plans_without_training(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data.source", str(corpus / "corpus"), "--data.path", str(corpus / "data"), "--train.peak_flops", "1e11"]
    rc = main(
        ["train", "--preset", "tiny-gpt", "--flops", "3e10", "--mfu", "0.3", "--out", str(out), "--print-config", *args]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "compute-optimal:" in text and "max_steps:" in text and not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "5x"], "wall time"),
        (["--budget", "5s", "--flops", "1e12"], "not both"),
        (["--law", "epoch"], "--budget TIME or --flops"),
        (["--mfu", "0.3"], "--budget TIME or --flops"),
        (["--remeasure"], "--budget TIME or --flops"),
        (["--budget", "5s", "--model.n_layer", "3"], "model.n_layer"),
        (["--budget", "5s", "--train.max_steps", "3"], "max_steps"),
        (["--flops", "-1"], "positive"),
    ],
)
def test_budget_command_errors(argv, message, capsys):
    assert main(["train", "--preset", "tiny-gpt", *argv]) == 2
    assert message in capsys.readouterr().err


def test_budget_and_resume_exclude_each_other(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--budget", "5s"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("5m", 300), ("5min", 300), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("42", 42)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "0s", "1h30", "5m later"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration(text)
