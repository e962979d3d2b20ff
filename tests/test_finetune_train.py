"""Fine-tuning through the training engine: frozen parameters stay bitwise equal, bad rows stop a
run before it trains, best/ follows the chosen metric, early stopping, the three tasks, the CLI."""

import json
import random

import pytest
import torch

from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError, DataError
from lmforge.finetune import FinetuneConfig, finetune, load_task_model, lora
from lmforge.models import build_model, load_model, save_model
from lmforge.tokenizer import train_tokenizer

WORDS = {"pos": ["good", "fine", "great", "nice"], "neg": ["bad", "poor", "awful", "sad"]}


def _rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = [rng.choice(WORDS[label])] + [rng.choice("abcdefg") * rng.randint(1, 3) for _ in range(3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok():
    texts = [r["text"] for r in _rows(50, 0)] + ["Q: 2+2? A: four. abcdefghijklmnopqrstuvwxyz0123456789"]
    return train_tokenizer("char", texts)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("task")
    return _jsonl(d / "train.jsonl", _rows(64, 1)), _jsonl(d / "val.jsonl", _rows(24, 2))


def _backbone(tok, preset="gpt-tiny", seed=0, **kw):
    torch.manual_seed(seed)
    ids = {k: getattr(tok, k) for k in ("pad_id", "bos_id", "eos_id", "mask_id") if getattr(tok, k) is not None}
    return build_model(ModelConfig.from_preset(preset, vocab_size=tok.vocab_size, max_positions=48, **ids, **kw))


def _cfg(files, **kw):
    train = dict(
        max_steps=6,
        batch_size=8,
        lr=3e-3,
        warmup_steps=1,
        eval_every=3,
        log_every=3,
        threads=1,
        progress=False,
        sample_tokens=0,
        checkpoint_every=0,
        peak_flops=1e11,
        seed=1,
    )
    train.update(kw.pop("train", {}))
    return FinetuneConfig.from_dict(
        {"task": "classify", "train_file": files[0], "val_file": files[1], "max_len": 32, "train": train, **kw}
    )


@pytest.mark.parametrize("spec", ["bitfit", "top-k:1", "no-embeddings", "lora"])
def test_frozen_parameters_are_bitwise_unchanged(tok, files, spec):
    model = _backbone(tok, "bert-tiny" if spec == "no-embeddings" else "gpt-tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = finetune(_cfg(files, params=spec, lora={"rank": 2}), model, tok, save=False, log=lambda s: None)
    trained = res.model
    if spec == "lora":  # the base weights sit inside the adapters' wrappers
        names = {n.replace(".base.", "."): p for n, p in trained.backbone.named_parameters()}
    else:
        names = dict(trained.backbone.named_parameters())
    changed = frozen = 0
    for name, p in names.items():
        if name not in before:  # LoRA matrices
            continue
        if p.requires_grad:
            changed += not torch.equal(p.cpu(), before[name])
        else:
            frozen += 1
            assert torch.equal(p.cpu(), before[name]), f"{spec}: frozen {name} changed"
    assert frozen > 0 and (changed > 0 or spec == "lora")
    assert res.trainable.trainable == sum(p.numel() for p in trained.parameters() if p.requires_grad)


def test_bad_rows_stop_the_run_before_training(tok, files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = _rows(10, 3)
    rows[4] = {"text": "", "label": "pos"}
    rows[7] = {"label": "neg"}
    _jsonl(bad, rows)
    model = _backbone(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg((str(bad), files[1]), out_dir=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"bad\.jsonl: 2 bad row\(s\) of 10: line 5: empty 'text'; line 8: missing"):
        finetune(cfg, model, tok, log=lambda s: None)
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # and through the CLI: one line, exit status 2, no traceback
    model_dir = save_model(_backbone(tok), tmp_path / "m", tokenizer=tok)
    code = main(
        [
            "finetune",
            "--task",
            "classify",
            "--train",
            str(bad),
            "--val",
            files[1],
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "run2"),
        ]
    )
    assert code == 2 and not (tmp_path / "run2").exists()


def test_best_checkpoint_follows_the_metric_and_early_stopping(tok, files, tmp_path):
    cfg = _cfg(files, out_dir=str(tmp_path / "run"), patience=1, train=dict(max_steps=60, eval_every=2, lr=1e-2))
    res = finetune(cfg, _backbone(tok), tok, log=lambda s: None)
    assert res.steps < 60  # stopped early
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    f1 = [(r["step"], r["val_macro_f1"]) for r in evals if "val_macro_f1" in r]
    best_step, best = max(f1, key=lambda t: (t[1], -t[0]))
    assert res.best_step == best_step and res.metrics["macro_f1"] == pytest.approx(best)
    saved = json.loads((tmp_path / "run" / "best" / "eval.json").read_text())
    assert saved["step"] == best_step
    model, extra = load_task_model(tmp_path / "run" / "best")
    assert model.labels == ["neg", "pos"] and extra["task"]["metric"] == "macro_f1"
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(cfg, _backbone(tok), tok, log=lambda s: None)


def test_cli_lora_run_writes_a_plain_model_and_adapters(tok, files, tmp_path, capsys):
    model_dir = save_model(_backbone(tok), tmp_path / "pre", tokenizer=tok)
    code = main(
        [
            "finetune",
            "--task",
            "classify",
            "--train",
            files[0],
            "--val",
            files[1],
            "--model",
            str(model_dir),
            "--params",
            "lora",
            "--lora-rank",
            "4",
            "--lora-targets",
            "attn.qkv,mlp.fc",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--out",
            str(tmp_path / "run"),
            "--train.threads",
            "1",
            "--train.progress",
            "false",
            "--train.peak_flops",
            "1e11",
            "--max-len",
            "32",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "trainable parameters (lora):" in out and "macro_f1" in out
    best = tmp_path / "run" / "best"
    assert (best / "adapters.safetensors").is_file() and (best / "head.safetensors").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()  # a finished run keeps best/, not resume state
    clf, _ = load_task_model(best)
    assert not lora.lora_modules(clf)  # merged: no LoRA code needed to use it
    assert load_model(best).config.arch == "decoder"


def test_completion_and_seq2seq_tasks(tok, tmp_path):
    pairs = [(f"Q: {a}{b}? A:", f" {b}{a}") for a in "abcd" for b in "efg"]
    comp = _jsonl(tmp_path / "c.jsonl", [{"prompt": p, "completion": c} for p, c in pairs])
    cfg = _cfg(
        (comp, comp), task="completion", params="lora", metric="exact_match", train=dict(max_steps=4, eval_every=4)
    )
    res = finetune(cfg, _backbone(tok), tok, save=False, log=lambda s: None)
    assert {"loss", "exact_match", "bleu"} <= set(res.metrics)
    s2s = _jsonl(tmp_path / "s.jsonl", [{"source": p, "target": c} for p, c in pairs])
    cfg = _cfg((s2s, s2s), task="seq2seq", params="bitfit", train=dict(max_steps=4, eval_every=4))
    res = finetune(cfg, _backbone(tok, "seq2seq-tiny"), tok, save=False, log=lambda s: None)
    assert res.metrics["loss"] > 0 and "bleu" in res.metrics


def test_an_encoder_decoder_classifies_with_its_encoder_and_keeps_its_decoder(tok, files, tmp_path):
    model = _backbone(tok, "seq2seq-tiny")
    shared = {id(p) for p in model.encoder.parameters()}  # the token embedding, which the encoder reads
    decoder_before = {n: p.detach().clone() for n, p in model.decoder.named_parameters() if id(p) not in shared}
    encoder_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    cfg = _cfg(files, train=dict(max_steps=40, eval_every=20), out_dir=str(tmp_path / "run"))
    res = finetune(cfg, model, tok, log=lambda s: None)
    assert res.model.pooling == "mean" and res.metrics["accuracy"] >= 0.75  # 0.83: the label word is in the text
    decoder_after = dict(res.model.backbone.decoder.named_parameters())
    assert decoder_before and all(torch.equal(decoder_after[n], p) for n, p in decoder_before.items())
    assert any(not torch.equal(p, encoder_before[n]) for n, p in res.model.backbone.encoder.named_parameters())
    again, extra = load_task_model(tmp_path / "run" / "best")
    assert extra["task"]["pooling"] == "mean" and again.config.arch == "encoder-decoder"


def test_genre_task_splits_by_play():
    from lmforge.data.corpus import VALIDATION_PLAYS
    from lmforge.finetune.tasks import GENRES, genre_rows

    train, val = genre_rows(passage_chars=400, max_per_class=50, val_per_play=20, seed=3)
    assert {r["play"] for r in val} == set(VALIDATION_PLAYS)
    assert not {r["play"] for r in train} & set(VALIDATION_PLAYS)
    labels = sorted(GENRES.values())
    assert sorted({r["label"] for r in train}) == labels == sorted({r["label"] for r in val})
    assert all(sum(r["label"] == g for r in train) == 50 for g in labels)  # balanced by the cap
    assert len(val) == 6 * 20 and all(200 <= len(r["text"]) <= 600 for r in train + val)


def test_genre_preset_through_the_cli(tok, tmp_path, capsys):
    model_dir = save_model(_backbone(tok), tmp_path / "pre", tokenizer=tok)
    code = main(
        [
            "finetune",
            "--preset",
            "shakespeare-genre",
            "--model",
            str(model_dir),
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--max-per-class",
            "4",
            "--val-per-play",
            "2",
            "--max-len",
            "32",
            "--out",
            str(tmp_path / "run"),
            "--train.threads",
            "1",
            "--train.progress",
            "false",
            "--train.peak_flops",
            "1e11",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out[out.index("{\n") :])
    assert result["baseline"]["macro_f1"] < 0.2 and 0 <= result["metrics"]["macro_f1"] <= 1
    _, extra = load_task_model(tmp_path / "run" / "best")
    assert extra["task"]["labels"] == ["comedy", "history", "problem", "roman", "romance", "tragedy"]


def test_info_plan_and_convert_read_a_fine_tuned_best_directory(tok, files, tmp_path, capsys):
    run = tmp_path / "run"
    finetune(
        _cfg(files, out_dir=str(run), train=dict(max_steps=2, eval_every=2)), _backbone(tok), tok, log=lambda s: None
    )
    best = run / "best"
    assert "lmforge" in json.loads((best / "config.json").read_text())  # the task section that info refused
    expected = load_model(best).config.to_dict()
    for source in (best, run):  # the best/ directory, or the run directory holding it
        assert main(["info", "--config", str(source), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["config"] == expected
        assert main(["plan", "--model", str(source), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["config"] == expected
    hf = tmp_path / "hf"
    assert main(["convert", "to-hf", str(run), str(hf)]) == 0
    capsys.readouterr()
    assert main(["info", "--config", str(hf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["d_model"] == expected["d_model"]
