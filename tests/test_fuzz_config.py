"""A fuzz of the configuration surface: every numeric field of every config (model, data, train,
fine-tune with LoRA, sampling) gets random NaN, infinities, negatives, fractions, huge numbers,
empty strings and ordinary values through the command line. Each outcome is either a one-step run
that succeeds or one line ``error: ...`` naming the field; never a traceback."""

import contextlib
import dataclasses
import io
import itertools
import os
import types
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.finetune import FinetuneConfig
from lmforge.finetune.lora import LoRAConfig
from lmforge.infer.options import SamplingOptions
from lmforge.train.config import DataConfig, TrainConfig
from lmforge.train.engine import STOP_AFTER_STEPS_ENV

FUZZ = settings(
    deadline=None,
    max_examples=40,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def numeric_fields(cls) -> list[str]:
    """Fields annotated int or float (optional or not)."""
    hints = typing.get_type_hints(cls)

    def numeric(tp) -> bool:
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            return any(numeric(a) for a in typing.get_args(tp) if a is not type(None))
        return tp in (int, float)

    return [f.name for f in dataclasses.fields(cls) if numeric(hints[f.name])]


TRAIN_FIELDS = (
    [f"model.{n}" for n in numeric_fields(ModelConfig)]
    + [f"data.{n}" for n in numeric_fields(DataConfig)]
    + [f"train.{n}" for n in numeric_fields(TrainConfig)]
)
FINETUNE_FIELDS = numeric_fields(FinetuneConfig) + [f"lora.{n}" for n in numeric_fields(LoRAConfig)]
SAMPLING_FIELDS = numeric_fields(SamplingOptions)

SPECIAL = ["nan", "NaN", "inf", "-inf", "1e400", "", " ", "abc", "1e3x", "none"]
values = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(10**6), -1).map(str),  # negatives
    st.sampled_from(["-0.5", "0.5", "1.5", "2.7", "0.999", "1e-3"]),  # fractions
    st.sampled_from(["1e9", "1e12", "1e18", "1e30", "1e300", str(2**63), str(10**25)]),  # huge
    st.integers(0, 64).map(str),  # ordinary whole numbers
    st.floats(0, 2, allow_nan=False).map(lambda x: f"{x:.3g}"),  # ordinary reals
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny corpus prepared once, task files, a tokenizer and a model directory."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "corpus.txt").write_text("FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n" * 30)
    base = [
        "train",
        "--preset",
        "tiny-gpt",
        "--data.source",
        str(root / "corpus.txt"),
        "--data.path",
        str(root / "data"),
        "--train.max_steps",
        "1",
        "--train.eval_every",
        "0",
        "--train.checkpoint_every",
        "0",
        "--train.threads",
        "1",
        "--train.peak_flops",
        "1e11",
        "--train.sample_tokens",
        "4",
        "--train.tensorboard",
        "false",
        "--train.progress",
        "false",
    ]
    assert run(base + ["--out", str(root / "first")]) == (0, "")
    rows = "text,label\n" + "".join(f"the fox runs {i},a\na dog sleeps {i},b\n" for i in range(6))
    (root / "train.csv").write_text(rows)
    (root / "val.csv").write_text(rows)
    finetune = [
        "finetune",
        "--task",
        "classify",
        "--train",
        str(root / "train.csv"),
        "--val",
        str(root / "val.csv"),
        "--model",
        "gpt-tiny",
        "--tokenizer",
        str(root / "data" / "tokenizer.json"),
        "--params",
        "lora",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--train.threads",
        "1",
        "--train.peak_flops",
        "1e11",
        "--train.progress",
        "false",
        "--train.tensorboard",
        "false",
    ]
    generate = ["generate", str(root / "first" / "best"), "--prompt", "FIRST", "--max-new-tokens", "4", "--seed", "0"]
    return types.SimpleNamespace(root=root, train=base, finetune=finetune, generate=generate, n=itertools.count())


def run(argv) -> tuple[int, str]:
    """(exit status, stderr) of the CLI; argparse's own errors exit through SystemExit."""
    err, threads = io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    finally:
        torch.set_num_threads(threads)
    return rc, err.getvalue().strip()


def check(rc: int, err: str, field: str, ok=(0,)) -> None:
    """A successful run, or one line ``error: ...`` that names the field (or its --flag spelling)."""
    if rc in ok:
        return
    name = field.rsplit(".", 1)[-1]
    assert rc == 2, (field, rc, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (field, err)
    assert name in err or f"--{name.replace('_', '-')}" in err, (field, err)


@FUZZ
@given(field=st.sampled_from(TRAIN_FIELDS), value=values)
def test_fuzz_train_fields(world, field, value):
    os.environ[STOP_AFTER_STEPS_ENV] = "1"  # a huge train.max_steps still stops after one step
    try:
        rc, err = run(world.train + ["--out", world.root / f"run{next(world.n)}", f"--{field}", value])
    finally:
        del os.environ[STOP_AFTER_STEPS_ENV]
    check(rc, err, field, ok=(0, 143))  # 143: stopped by SIGTERM, checkpointed


@settings(FUZZ, max_examples=20)
@given(field=st.sampled_from(FINETUNE_FIELDS), value=values)
def test_fuzz_finetune_fields(world, field, value):
    flag = f"--{field}" if "." in field else f"--{field.replace('_', '-')}"  # top-level fields have flags
    rc, err = run(world.finetune + ["--out", world.root / f"ft{next(world.n)}", flag, value])
    check(rc, err, field)


@FUZZ
@given(field=st.sampled_from(SAMPLING_FIELDS), value=values)
def test_fuzz_sampling_options(world, field, value):
    rc, err = run(world.generate + [f"--{field.replace('_', '-')}", value])
    check(rc, err, field)


@pytest.mark.parametrize("field", TRAIN_FIELDS + FINETUNE_FIELDS)
def test_every_field_refuses_nan_and_the_empty_string_by_name(field):
    """Without a run: the validation that every value above goes through first."""
    from lmforge.errors import ConfigError
    from lmforge.train import RunConfig

    cfg = FinetuneConfig() if field in FINETUNE_FIELDS else RunConfig.from_preset("tiny-gpt")
    for value in ("nan", "", "-inf", "1e400"):
        with pytest.raises(ConfigError) as e:
            cfg.override({field: value})
        assert str(e.value).startswith(field + ":") and "\n" not in str(e.value), str(e.value)
