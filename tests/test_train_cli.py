"""``lmforge train`` end to end on a tiny corpus: run directory, exact resume after SIGTERM,
resume after SIGKILL mid-checkpoint and from a corrupt checkpoint, and DDP under torchrun."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.train import RunConfig
from lmforge.train.checkpoint import KILL_DURING_CHECKPOINT_ENV
from lmforge.train.engine import STOP_AFTER_STEPS_ENV

TEXT = "FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\nALL:\nSpeak, speak.\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Common arguments: the tiny-gpt preset on a few small files, with dropout (so RNG matters)."""
    root = tmp_path_factory.mktemp("train_cli")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(5):
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
        "--model.dropout",
        "0.1",
    ]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def train(*args) -> int:
    return main(["train", *map(str, args)])


def losses(run_dir):
    return [
        (r["step"], r.get("loss"), r.get("val_loss"))
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    ]


def final_weights(run_dir, step=8):
    return load_file(str(run_dir / "checkpoints" / f"step-{step}" / "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(base):
    """The uninterrupted 8-step run."""
    root, args = base
    assert train(*args, "--out", root / "ref") == 0
    return root / "ref"


def test_run_directory_layout(reference):
    assert RunConfig.from_file(reference / "config.yaml").train.max_steps == 8
    assert {p.name for p in (reference / "checkpoints").iterdir()} == {"step-6", "step-8"}  # keep the last 2
    for name in ("config.json", "model.safetensors", "tokenizer.json", "state.pt", "manifest.json"):
        assert (reference / "checkpoints" / "step-8" / name).is_file()
    assert (reference / "best" / "eval.json").is_file() and (reference / "plots" / "loss.png").is_file()
    records = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    for key in ("loss", "lr", "tokens", "tokens_per_s", "mfu", "grad_norm"):
        assert key in records[0]
    assert {"val_loss", "val_ppl", "val_bpb"} <= set(records[3]) and "val_bpb" in records[-1]
    from lmforge.models import load_model

    assert (
        load_model(reference / "best").config.vocab_size
        == load_model(reference / "checkpoints" / "step-8").config.vocab_size
    )


def test_causal_pretraining_makes_eos_the_text_start(reference):
    """The causal stream separates documents with EOS and never holds BOS: scoring, generation and
    completion fine-tuning of the trained model put EOS in front of a text, not the untrained BOS."""
    from lmforge.finetune.tasks import encode_completion
    from lmforge.infer import load_for_inference
    from lmforge.infer.prompts import encode_for_decoder, encode_prompt, text_start_id

    model, tok = load_for_inference(reference / "best", "cpu")
    assert tok.bos_id is not None and tok.eos_id != tok.bos_id
    assert model.config.text_start_id == tok.eos_id == text_start_id(tok, model)
    assert encode_for_decoder(tok, "Speak", model=model) == [tok.eos_id, *tok.encode("Speak")]
    assert encode_prompt(tok, "Speak", model)[0] == tok.eos_id
    assert encode_completion(tok, "Speak", "ALL", 16, text_start_id(tok, model)).input_ids[0] == tok.eos_id
    assert encode_for_decoder(tok, "Speak")[0] == tok.bos_id  # without the model: BOS, as before


def test_resuming_a_finished_run_gives_its_final_evaluation(reference, tmp_path):
    """A run that finished but whose result was not collected (a sweep stopped meanwhile) resumes
    to "nothing to do" and returns the final evaluation it logged."""
    import shutil

    from lmforge.train.run import pretrain

    run_dir = tmp_path / "ref"
    shutil.copytree(reference, run_dir)
    cfg = RunConfig.from_file(run_dir / "config.yaml").replace(out_dir=str(run_dir))
    result = pretrain(cfg, resume=True, log=lambda m: None)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert result.step == 8 and result.metrics["loss"] == last["val_loss"] and result.metrics["bpb"] == last["val_bpb"]


def test_sigterm_then_resume_is_bit_exact(base, reference, monkeypatch):
    root, args = base
    out = root / "stopped"
    monkeypatch.setenv(STOP_AFTER_STEPS_ENV, "5")
    assert train(*args, "--out", out) == 143  # stopped by SIGTERM after step 5, checkpointed
    monkeypatch.delenv(STOP_AFTER_STEPS_ENV)
    assert (out / "checkpoints" / "step-5" / "manifest.json").is_file()
    assert train(*args, "--out", out) == 2  # no silent restart over an existing run: use --resume
    assert train("--resume", out) == 0
    assert losses(out) == losses(reference)
    assert_same_weights(final_weights(out), final_weights(reference))


def test_corrupt_checkpoint_falls_back_to_the_previous(base, reference, monkeypatch, capsys):
    root, args = base
    out = root / "corrupt"
    monkeypatch.setenv(STOP_AFTER_STEPS_ENV, "5")
    assert train(*args, "--out", out) == 143
    monkeypatch.delenv(STOP_AFTER_STEPS_ENV)
    state = out / "checkpoints" / "step-5" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    assert train("--resume", out) == 0
    assert "step-5/state.pt" in capsys.readouterr().out
    assert losses(out) == losses(reference)  # replayed from step 3
    assert_same_weights(final_weights(out), final_weights(reference))


def run_command(cmd, env=None, timeout=240):
    """Run in a new process group; on a timeout kill the whole group (torchrun's workers too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


def test_sigkill_while_checkpointing_resumes_from_the_previous(base, reference):
    root, args = base
    out = root / "killed"
    rc, _, err = run_command(
        [sys.executable, "-m", "lmforge", "train", *map(str, args), "--out", str(out)],
        env={KILL_DURING_CHECKPOINT_ENV: "6"},
    )
    assert rc == -signal.SIGKILL, err[-2000:]
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-3"]
    assert any(p.name.startswith(".step-6.tmp") for p in (out / "checkpoints").iterdir())  # the half-written one
    assert train("--resume", out) == 0
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())  # cleaned up
    assert losses(out) == losses(reference)
    assert_same_weights(final_weights(out), final_weights(reference))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_matches_one_process(base, strategy):
    root, args = base
    # the same global batch of 8 as 2 micro-steps of 4 rows; under DDP each rank takes 2 rows of each
    # (the first micro-step skips the all-reduce). Summation order differs, so gradients agree to float
    # rounding; eps=1e-6 keeps Adam from blowing up that rounding where a gradient is almost exactly 0.
    # on the CPU (gloo) even where a GPU is present: two ranks need two GPUs under NCCL
    common = [
        *args,
        "--train.device",
        "cpu",
        "--train.max_steps",
        "3",
        "--train.eval_every",
        "0",
        "--model.dropout",
        "0",
        "--train.batch_size",
        "8",
        "--train.grad_accum",
        "2",
        "--train.eps",
        "1e-6",
    ]
    if not (root / "single").exists():
        assert train(*common, "--out", root / "single") == 0
    rc, _, err = run_command(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lmforge",
            "train",
            *map(str, common),
            "--train.strategy",
            strategy,
            "--out",
            str(root / strategy),
        ]
    )
    assert rc == 0, err[-3000:]
    single, multi = losses(root / "single"), losses(root / strategy)
    assert [s for s, *_ in multi] == [1, 2, 3]
    assert [x[1] for x in multi] == pytest.approx([x[1] for x in single], abs=1e-5)
    # FSDP2 saves the gathered (unsharded) weights: the same file as one process writes
    assert_same_weights(final_weights(root / strategy, 3), final_weights(root / "single", 3), atol=1e-5)
