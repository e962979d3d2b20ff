"""The training engine with in-test batch sources: schedules, optimizer groups, accumulation,
non-finite steps, checkpoints, exact resume, activation checkpointing, the run-directory layout,
the best-checkpoint policy and the stop condition."""

import json
import math
import os

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, TrainingError
from lmforge.models import build_model
from lmforge.train import TrainConfig, Trainer, lr_at, param_groups
from lmforge.train import checkpoint as ckpt
from lmforge.train.distributed import apply_activation_checkpointing
from lmforge.train.engine import STOP_AFTER_STEPS_ENV


class Windows:
    """Random windows of a fixed token stream: a minimal resumable causal-LM batch source."""

    def __init__(self, tokens: torch.Tensor, batch: int, seq: int, seed: int = 0):
        self.tokens, self.batch, self.seq = tokens, batch, seq
        self.g = torch.Generator().manual_seed(seed)

    def next_batch(self):
        starts = torch.randint(0, len(self.tokens) - self.seq - 1, (self.batch,), generator=self.g)
        x = torch.stack([self.tokens[s : s + self.seq + 1] for s in starts.tolist()])
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def state_dict(self):
        return {"rng": self.g.get_state()}

    def load_state_dict(self, state):
        self.g.set_state(state["rng"])


class Fixed:
    """The same batch again and again (overfitting tests)."""

    def __init__(self, batch):
        self.batch, self.n = batch, 0

    def next_batch(self):
        self.n += 1
        return self.batch

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _cfg(**kw) -> TrainConfig:
    # on the CPU, where fp32 makes these properties exact; tests/test_cuda.py repeats the ones that
    # depend on the device (bf16 training, resume, compile) on a GPU
    base = dict(
        device="cpu",
        max_steps=10,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        log_every=1,
        checkpoint_every=0,
        threads=1,
        peak_flops=1e11,
        progress=False,
        sample_tokens=0,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def _gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_preset("gpt-tiny", max_positions=32, **kw))


TOKENS = torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # the configs here use one thread; leave the session as found
    yield
    torch.set_num_threads(n)


# ---- schedule and optimizer groups ------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_schedule_warmup_then_decay(schedule):
    cfg = _cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule=schedule, decay_fraction=0.2)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10]))
    if schedule == "constant":
        assert lrs[-1] == 1.0
        return
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warmup
    assert lrs[-1] == pytest.approx(0.1, abs=0.02)
    if schedule == "wsd":
        assert lrs[79] == 1.0 and lrs[85] < 1.0  # stable until the last 20%


def test_param_groups_no_decay_on_biases_norms_embeddings():
    m = _gpt()
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert any("tok_emb" in n for n in no_decay_names) and any("pos_emb" in n for n in no_decay_names)
    assert any(n.endswith("bias") for n in no_decay_names) and any("norm" in n for n in no_decay_names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    m = _gpt()
    t = Trainer(m, _cfg(optimizer="muon"), Windows(TOKENS, 4, 16))
    names = {id(p): n for n, p in m.named_parameters()}
    muon = {names[id(p)] for g in t.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in t.optimizer.param_groups for p in g["params"]}
    assert muon == {
        f"transformer.blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert not muon & adamw and muon | adamw == set(names.values())
    assert any("tok_emb" in n for n in adamw) and any("pos_emb" in n for n in adamw)  # (the tied head too)
    assert type(t.muon).__name__ == "Float32Muon"  # the CPU's Newton-Schulz iteration runs in fp32
    r = t.train_step()
    assert t.muon.param_groups[0]["lr"] == pytest.approx(0.02 * r.lr / 3e-3)  # Muon's lr, on the same schedule
    untied = build_model(ModelConfig.from_preset("llama-tiny", max_positions=32))
    head = Trainer(untied, _cfg(optimizer="muon"), Windows(TOKENS, 4, 16)).optimizer.param_groups[0]["params"]
    assert any(p is untied.lm_head.weight for p in head)  # an untied head is AdamW's decayed matrix


def test_muon_fp32_step_is_torch_muon_up_to_its_bf16_rounding():
    from lmforge.train.optim import Float32Muon, orthogonalize

    torch.manual_seed(0)
    start, grads = torch.randn(96, 32), [torch.randn(96, 32) for _ in range(3)]
    params = []
    for cls in (Float32Muon, torch.optim.Muon):
        p = torch.nn.Parameter(start.clone())
        opt = cls([p], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        params.append(p.detach())
    ours, torchs = params
    moved = (ours - start).abs().max()
    assert moved > 0.01 and (ours - torchs).abs().max() < 0.05 * moved
    s = torch.linalg.svdvals(orthogonalize(torch.randn(64, 192), (3.4445, -4.7750, 2.0315), 5, 1e-7))
    assert 0.5 < s.min() and s.max() < 1.3  # near-orthogonal: the singular values pushed towards 1
    o = orthogonalize(grads[0], (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torch.testing.assert_close(orthogonalize(grads[0].T, (3.4445, -4.7750, 2.0315), 5, 1e-7), o.T)


def test_muon_checkpoints_resume_only_as_muon(tmp_path):
    from lmforge.errors import ConfigError

    _run(tmp_path, 3, optimizer="muon")
    with pytest.raises(CheckpointError, match="train.optimizer=muon"):
        _run(tmp_path, 6, resume_from=tmp_path / "checkpoints" / "step-3")
    with pytest.raises(ConfigError, match="train.optimizer: muon.*strategy=ddp"):
        _cfg(optimizer="muon", strategy="fsdp")


# ---- the step ----------------------------------------------------------------------------------


def test_grad_accumulation_equals_one_big_batch():
    batch = Windows(TOKENS, 8, 16).next_batch()
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    a = Trainer(_gpt(), _cfg(batch_size=8, grad_accum=1), Fixed(batch))
    b = Trainer(_gpt(), _cfg(batch_size=8, grad_accum=2), Fixed(batch))
    ra, rb = a.train_step([batch]), b.train_step(halves)
    assert ra.loss == pytest.approx(rb.loss, abs=1e-6)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_activation_checkpointing_same_gradients():
    batch = Windows(TOKENS, 4, 16).next_batch()
    plain, patched = _gpt(), _gpt()
    assert apply_activation_checkpointing(patched) == 2
    for m in (plain, patched):
        m(**batch).loss.backward()
    for (n, p), q in zip(plain.named_parameters(), patched.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_trainable_selection_freezes_the_rest():
    m = _gpt()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    t = Trainer(m, _cfg(max_steps=3), Windows(TOKENS, 4, 16), trainable=lambda n, p: "blocks.1." in n)
    t.fit()
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) != ("blocks.1." in n), n


# ---- non-finite steps ----------------------------------------------------------------------------


class PoisonAt(torch.nn.Module):
    """Wraps a model; its loss is NaN on the given (1-based) forward calls."""

    def __init__(self, inner, bad_calls):
        super().__init__()
        self.inner, self.bad, self.calls = inner, set(bad_calls), 0
        self.config = inner.config

    def forward(self, input_ids, labels=None):
        self.calls += 1
        out = self.inner(input_ids, labels=labels)
        if self.calls in self.bad:
            out.loss = out.loss * float("nan")
        return out


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    m = PoisonAt(_gpt(), bad_calls={3})
    t = Trainer(m, _cfg(max_steps=5), Windows(TOKENS, 4, 16), run_dir=tmp_path)
    snapshots = []
    orig = t.train_step

    def step(micro=None):
        before = [p.detach().clone() for p in m.parameters()]
        r = orig(micro)
        snapshots.append((r, before, [p.detach().clone() for p in m.parameters()]))
        return r

    t.train_step = step
    result = t.fit()
    assert result.step == 5 and result.nonfinite_steps == 1
    r, before, after = snapshots[2]
    assert r.skipped and all(torch.equal(a, b) for a, b in zip(before, after))  # no update
    assert not snapshots[3][0].skipped
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["nonfinite_steps"] == 1
    assert all(math.isfinite(r["loss"]) for r in records if r["step"] != 3)


def test_too_many_nonfinite_in_a_row_stop_cleanly(tmp_path):
    m = PoisonAt(_gpt(), bad_calls={5, 6, 7})
    t = Trainer(m, _cfg(max_steps=10, max_nonfinite=3, checkpoint_every=2), Windows(TOKENS, 4, 16), run_dir=tmp_path)
    with pytest.raises(TrainingError, match="3 non-finite steps in a row.*step-4"):
        t.fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4]  # the last good one is kept
    ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step-4")


# ---- checkpoints and exact resume ----------------------------------------------------------------


def _run(tmp, steps, resume_from=None, stop_at=None, **kw):
    cfg = _cfg(max_steps=steps, checkpoint_every=3, keep_checkpoints=2, **kw)
    os.environ[STOP_AFTER_STEPS_ENV] = str(stop_at or 0)  # SIGTERM to itself after this step
    try:
        t = Trainer(
            _gpt(dropout=0.1),
            cfg,
            Windows(TOKENS, 4, 16, seed=5),
            eval_batches=lambda n: [Windows(TOKENS, 4, 16, seed=9).next_batch()],
            run_dir=tmp,
        )
    finally:
        del os.environ[STOP_AFTER_STEPS_ENV]
    if resume_from is not None:
        t.resume(resume_from)
    result = t.fit()
    assert result.stopped_by == ("SIGTERM" if stop_at else None)
    losses = [json.loads(x)["loss"] for x in (tmp / "metrics.jsonl").read_text().splitlines()]
    return t, losses


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bit_exact(tmp_path, optimizer):
    full, losses_full = _run(tmp_path / "a", 8, optimizer=optimizer)
    _run(tmp_path / "b", 8, stop_at=5, optimizer=optimizer)  # checkpoints at 3 and 5 (the end of the first leg)
    resumed, losses_resumed = _run(
        tmp_path / "b", 8, resume_from=ckpt.latest_valid(tmp_path / "b"), optimizer=optimizer
    )
    assert resumed.step == 8
    assert losses_full == losses_resumed  # dropout on: RNG state is restored too
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)
    state = torch.load(tmp_path / "b" / "checkpoints" / "step-8" / "state.pt", weights_only=True)
    assert ("muon" in state) == (optimizer == "muon")  # both optimizers' states are in the checkpoint
    if optimizer == "muon":
        assert state["muon"]["state"] and state["optimizer"]["state"]


def test_state_loads_with_weights_only_and_corruption_falls_back(tmp_path):
    _run(tmp_path, 6)  # checkpoints at 3 and 6
    latest = tmp_path / "checkpoints" / "step-6"
    state = torch.load(latest / "state.pt", weights_only=True)
    assert state["step"] == 6 and "optimizer" in state and "rng" in state and "sampler" in state
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        ckpt.verify_checkpoint(latest)
    messages = []
    assert ckpt.latest_valid(tmp_path, log=messages.append) == tmp_path / "checkpoints" / "step-3"
    assert "step-6" in messages[0] and "model.safetensors" in messages[0]


def test_keep_last_checkpoints_and_best(tmp_path):
    _run(tmp_path, 9, eval_every=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 9]
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "best" / "eval.json").read_text())["step"] in (3, 6, 9)
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 1000


def test_a_job_sets_its_runtime_up_once(monkeypatch):
    from lmforge.train import distributed as D

    joined, setup = [], D.setup
    monkeypatch.setattr(D, "setup", lambda device: joined.append(device) or setup(device))
    runtime = D.setup_runtime(_cfg(threads=1))
    assert torch.get_num_threads() == 1 and runtime.device.type == "cpu" and runtime.dtype == torch.float32
    t = Trainer(_gpt(), _cfg(), Windows(TOKENS, 4, 16), runtime=runtime)
    assert joined == [runtime.device] and (t.device, t.dtype, t.dist) == (runtime.device, runtime.dtype, runtime.dist)
    Trainer(_gpt(), _cfg(), Windows(TOKENS, 4, 16))  # none given: the Trainer sets one up itself
    assert len(joined) == 2


def test_more_ranks_than_gpus_is_refused_before_nccl(monkeypatch):
    from lmforge.errors import ConfigError
    from lmforge.train import distributed as D

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="torchrun started 2 processes on this node but it has 1 GPU"):
        D.setup(torch.device("cuda", 0))


# ---- the run directory ---------------------------------------------------------------------------


def test_the_engine_writes_where_the_layout_says(tmp_path):
    from lmforge.train.rundir import RunDir

    Trainer(
        _gpt(),
        _cfg(max_steps=4, eval_every=2),
        Windows(TOKENS, 4, 16),
        eval_batches=lambda n: [Windows(TOKENS, 4, 16, seed=9).next_batch()],
        sample_fn=lambda m: "a sample",
        run_dir=tmp_path,
        log=lambda s: None,
    ).fit()
    run = RunDir(tmp_path)
    assert [json.loads(x)["step"] for x in run.metrics.read_text().splitlines()] == [1, 2, 3, 4]
    assert run.samples.read_text().startswith("--- step 2\na sample")
    assert json.loads(run.best_eval.read_text())["step"] in (2, 4) and (run.best / "model.safetensors").is_file()
    assert (run.checkpoint(4) / "state.pt").is_file() and run.checkpoint(4).parent == run.checkpoints
    assert run.loss_plot.is_file()


def test_clear_removes_an_earlier_runs_files_only(tmp_path):
    from lmforge.train.rundir import RunDir

    run = RunDir(tmp_path)
    for d in (run.checkpoint(3), run.best, run.plots, run.tensorboard):
        d.mkdir(parents=True)
        (d / "x").write_text("x")
    for f in (run.metrics, run.samples, run.config, tmp_path / "result.json", tmp_path / "notes.txt"):
        f.write_text("x")
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "notes.txt", "result.json"]
    run.clear()  # nothing left to remove: no error
    assert repr(run) == f"RunDir({str(tmp_path)!r})"


# ---- best-checkpoint policy and stop condition ---------------------------------------------------

# A made-up evaluation metric by step: highest at 4 (then two evaluations without a new high), lowest at 2.
SCORES = {2: 1.0, 4: 3.0, 6: 2.0, 8: 2.5, 10: 1.5}


class Counted(Windows):
    """Windows that count the batches drawn (the step, at grad_accum 1), the count resumable."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.n = 0

    def next_batch(self):
        self.n += 1
        return super().next_batch()

    def state_dict(self):
        return {**super().state_dict(), "n": self.n}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.n = state["n"]


def _hooked(tmp, best, stop=None, stop_at=None, resume_from=None, snapshots=None, **kw):
    from lmforge.train.hooks import Patience

    batches = Counted(TOKENS, 4, 16, seed=5)

    def finish(model, metrics):
        if snapshots is not None:
            snapshots[batches.n] = {k: v.clone() for k, v in model.state_dict().items()}
        return {**metrics, "score": SCORES[batches.n]}

    os.environ[STOP_AFTER_STEPS_ENV] = str(stop_at or 0)
    try:
        t = Trainer(
            _gpt(dropout=0.1),
            _cfg(max_steps=10, eval_every=2, checkpoint_every=3, **kw),
            batches,
            eval_batches=lambda n: [Windows(TOKENS, 4, 16, seed=9).next_batch()],
            finish_metrics=finish,
            best_checkpoint=best,
            stop_condition=Patience("score", 2, "max") if stop else None,
            run_dir=tmp,
        )
    finally:
        del os.environ[STOP_AFTER_STEPS_ENV]
    if resume_from is not None:
        t.resume(resume_from)
    return t, t.fit()


@pytest.mark.parametrize("mode, step", [("max", 4), ("min", 2)])
def test_best_checkpoint_follows_its_metric_and_mode(tmp_path, mode, step):
    from lmforge.models.io import load_model
    from lmforge.train.hooks import BestCheckpoint

    snapshots = {}
    t, result = _hooked(tmp_path, BestCheckpoint("score", mode, keep_weights=True), snapshots=snapshots)
    assert result.step == 10 and result.early_stop is None  # no stop condition: max_steps
    assert result.best_step == t.best_step == step and result.best["score"] == SCORES[step]
    saved = json.loads((tmp_path / "best" / "eval.json").read_text())
    assert saved["step"] == step and saved["score"] == SCORES[step]
    for k, v in load_model(tmp_path / "best").state_dict().items():
        assert torch.equal(v, snapshots[step][k]), k  # best/ holds the weights of that evaluation
    t.restore_best()
    assert all(torch.equal(v, snapshots[step][k]) for k, v in t.model.state_dict().items())


def test_best_checkpoint_save_writes_best(tmp_path):
    from lmforge.train.hooks import BestCheckpoint

    written = []

    def save(model, directory):
        written.append(directory.name)
        directory.mkdir(exist_ok=True)

    _hooked(tmp_path, BestCheckpoint("score", "max", save=save))
    assert written == ["best", "best"]  # steps 2 and 4
    assert json.loads((tmp_path / "best" / "eval.json").read_text())["step"] == 4


def test_patience_stops_at_the_right_step_and_a_resumed_run_stops_there_too(tmp_path):
    from lmforge.train.hooks import BestCheckpoint

    best = BestCheckpoint("score", "max")
    full, a = _hooked(tmp_path / "a", best, stop=True)
    assert a.step == 8 and a.stopped_by is None  # 6 and 8 did not beat step 4's score
    assert a.early_stop == "early stop at step 8: score has not improved for 2 evaluations (best 3.0000 at step 4)"
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 8 and records[-1]["val_score"] == 2.5

    _hooked(tmp_path / "b", best, stop=True, stop_at=7)  # SIGTERM after step 7: one bad evaluation so far
    resumed, b = _hooked(tmp_path / "b", best, stop=True, resume_from=tmp_path / "b" / "checkpoints" / "step-7")
    assert b.step == 8 and b.early_stop == a.early_stop and b.best_step == 4  # the patience count went with it
    resumed_records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed_records] == [r["loss"] for r in records]
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)
    assert json.loads((tmp_path / "b" / "best" / "eval.json").read_text())["step"] == 4


def test_hooks_refuse_an_unknown_mode():
    from lmforge.errors import ConfigError
    from lmforge.train.hooks import BestCheckpoint, Patience

    with pytest.raises(ConfigError, match="mode: unknown 'up'"):
        BestCheckpoint("score", "up")
    with pytest.raises(ConfigError, match="patience: must be at least one"):
        Patience("score", 0)
