"""Run directories after a crash: a kill -9 while a checkpoint's model is written leaves nothing
that the clean-up does not know, and a torn last line of metrics.jsonl does not stop --resume."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from lmforge.cli.main import main
from lmforge.models.io import is_temporary, remove_temporaries
from lmforge.train.engine import STOP_AFTER_STEPS_ENV

TEXT = "FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\nALL:\nSpeak, speak.\n"

# Dies like kill -9 halfway through the weights of the step-6 checkpoint's model.
DIE_WRITING_MODEL = """
import os, signal, sys
import lmforge.models.io as io
real = io.save_file
def dying(tensors, filename, metadata=None):
    if ".step-6" in filename:
        with open(filename, "wb") as f:
            f.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, filename, metadata=metadata)
io.save_file = dying
from lmforge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("debris")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"part{i}.txt").write_text(TEXT * (20 + i), encoding="utf-8")
    return root, [
        "--preset",
        "tiny-gpt",
        "--data.source",
        str(corpus),
        "--data.path",
        str(root / "data"),
        "--train.threads",
        "1",
        "--train.peak_flops",
        "1e11",
        "--train.max_steps",
        "8",
        "--train.checkpoint_every",
        "3",
        "--train.eval_every",
        "4",
        "--train.sample_tokens",
        "0",
    ]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_kill_while_writing_a_checkpoint_model_leaves_no_unknown_debris(base):
    root, args = base
    out = root / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DIE_WRITING_MODEL, "train", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = hidden(out / "checkpoints")
    assert left and all(is_temporary(n) for n in left), left
    assert not any(n.startswith("..") for n in left), left  # the model went straight into .step-6.tmp-*
    assert main(["train", "--resume", str(out)]) == 0
    assert hidden(out / "checkpoints") == [] and hidden(out) == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-6", "step-8"]


def stopped_run(base, name, steps, monkeypatch):
    """The metrics.jsonl of a run stopped by SIGTERM after ``steps`` steps (checkpointed there)."""
    root, args = base
    monkeypatch.setenv(STOP_AFTER_STEPS_ENV, str(steps))
    assert main(["train", *args, "--out", str(root / name)]) == 143
    monkeypatch.delenv(STOP_AFTER_STEPS_ENV)
    return root / name / "metrics.jsonl"


def test_torn_last_metrics_line_is_dropped_with_a_warning(base, monkeypatch, capsys):
    metrics = stopped_run(base, "torn", 5, monkeypatch)
    out = metrics.parent
    with open(metrics, "a", encoding="utf-8") as f:
        f.write('{"step": 6, "loss": 3.9')  # what a kill in the middle of a write leaves
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert "metrics.jsonl: the last line is torn" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_damaged_metrics_in_the_middle_is_one_line_error(base, monkeypatch, capsys):
    metrics = stopped_run(base, "damaged", 4, monkeypatch)
    out = metrics.parent
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "metrics.jsonl:2" in err and "\n" not in err


def test_clean_up_knows_every_temporary_name(tmp_path):
    (tmp_path / ".step-6.tmp-ab12_x").mkdir()  # a half-written checkpoint
    (tmp_path / "..step-6.tmp-ab12_x.tmp-q9").mkdir()  # the nested kind older versions made
    (tmp_path / ".metrics.jsonl.tmp-k3j").write_text("{")
    (tmp_path / ".best.old-4242").mkdir()  # killed between the two renames: best/ is gone
    (tmp_path / "step-3").mkdir()
    (tmp_path / ".step-3.old-17").mkdir()  # step-3 is there: the old copy is debris
    (tmp_path / ".keep").write_text("not ours")
    removed = sorted(p.name for p in remove_temporaries(tmp_path))
    assert removed == ["..step-6.tmp-ab12_x.tmp-q9", ".metrics.jsonl.tmp-k3j", ".step-3.old-17", ".step-6.tmp-ab12_x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "best", "step-3"]
