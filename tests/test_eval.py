"""lmforge models in lm-evaluation-harness: the shipped offline tasks, lmforge's scoring, and the
cross-check against lm-eval's own HF model on the same weights."""

import json
import math
import re
import sys

import pytest
import torch
import yaml

import lmforge.eval as ev
from lmforge.config import ModelConfig
from lmforge.data.corpus import VALIDATION_PLAYS, shakespeare
from lmforge.errors import LMForgeError
from lmforge.eval import tasks as shipped
from lmforge.finetune.tasks import GENRES, restoration_prompt, restoration_source
from lmforge.models import build_model, save_model

TOL = 1e-4
DOCS = {
    "shakespeare_ppl": [0],
    "shakespeare_genre": list(range(18)),
    "shakespeare_cloze": list(range(16)),
    "shakespeare_restore": list(range(6)),
}
DECODER_TASKS = tuple(DOCS)


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    # simple_evaluate runs `pip list` and friends for its environment report: seconds per call
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random gpt-tiny (context 64) with a byte-level BPE, saved as lmforge pretraining leaves it
    (texts start after EOS), and its HF export made by ``lmforge convert to-hf``."""
    from lmforge.cli.main import main
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer("bpe", [d.text for d in shakespeare("train")[:2]], vocab_size=512)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "gpt-tiny",
        vocab_size=len(tok),
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        text_start_id=tok.eos_id,
    )
    model = build_model(cfg).eval()
    root = tmp_path_factory.mktemp("eval")
    ours = save_model(model, root / "lmforge", tokenizer=tok)
    assert main(["convert", "to-hf", str(ours), str(root / "hf")]) == 0
    return model, tok, ours, root / "hf"


@pytest.fixture(scope="module")
def runs(tiny):
    """The shipped tasks (a few documents each) through the harness: the lmforge model and lm-eval's
    hf model on the exported weights, with every request's answer kept."""
    import lm_eval.evaluator

    keep = lm_eval.evaluator.add_env_info
    lm_eval.evaluator.add_env_info = lambda results: None
    try:
        _, _, ours, hf = tiny
        return {
            name: ev.evaluate(path, ev.TAG, harness_model=name, samples=DOCS, device="cpu", log_samples=True)
            for name, path in (("lmforge", ours), ("hf", hf))
        }
    finally:
        lm_eval.evaluator.add_env_info = keep


def test_shipped_rows_come_from_held_out_plays_only_and_are_deterministic():
    held_out = set(VALIDATION_PLAYS)
    plays = {p.name: p.text for p in shakespeare("val")}
    assert [r["play"] for r in shipped.perplexity_rows()] == [p.name for p in shakespeare("val")]
    assert all(r["text"] == plays[r["play"]] for r in shipped.perplexity_rows())
    genre = shipped.genre_rows()
    assert {r["play"] for r in genre} == held_out and len(genre) == 6 * shipped.GENRE_PER_PLAY
    folder = {p.name: GENRES[p.label] for p in shakespeare("val")}
    names = list(shipped.GENRE_CHOICES)
    assert all(names[r["label"]] == r["genre"] == folder[r["play"]] for r in genre)
    assert [r["play"] for r in genre[:6]] == [p.name for p in shakespeare("val")]  # plays in turn: --limit mixes
    cloze = shipped.cloze_rows()
    assert {r["play"] for r in cloze} == held_out and len(cloze) == 6 * shipped.CLOZE_PER_PLAY
    for r in cloze:
        lines = plays[r["play"]].split("\n")
        assert len(set(r["choices"])) == shipped.CLOZE_CHOICES
        real = [c for c in r["choices"] if c in lines]
        assert real == [r["choices"][r["label"]]]  # exactly one reading is a line of the play: the answer
        assert r["answer"] in real[0] and r["context"] in plays[r["play"]]
    assert shipped.cloze_rows.__wrapped__() == cloze and shipped.genre_rows.__wrapped__() == genre
    restore = shipped.restore_rows()
    assert {r["play"] for r in restore} == held_out and len(restore) == 6 * shipped.RESTORE_PER_PLAY
    for r in restore:
        assert r["source"] == restoration_source(r["target"]) and r["prompt"] == restoration_prompt(r["source"])
        assert r["target"] in plays[r["play"]]


def test_task_yaml_names_and_genre_choices():
    configs = {p.stem: yaml.load(p.read_text(), Loader=yaml.BaseLoader) for p in shipped.TASK_DIR.glob("*.yaml")}
    assert sorted(configs) == sorted(shipped.SHIPPED_TASKS)
    tags = {name: c["tag"] if isinstance(c["tag"], list) else [c["tag"]] for name, c in configs.items()}
    assert all(c["task"] == name for name, c in configs.items())
    assert sorted(n for n, t in tags.items() if shipped.TAG in t) == sorted(DECODER_TASKS)
    assert sorted(n for n, t in tags.items() if shipped.SEQ2SEQ_TAG in t) == [
        "shakespeare_cloze",
        "shakespeare_genre",
        "shakespeare_restore_seq2seq",
    ]
    assert configs["shakespeare_genre"]["doc_to_choice"] == list(shipped.GENRE_CHOICES.values())
    assert configs["shakespeare_ppl"]["output_type"] == "loglikelihood_rolling"


def test_bits_per_byte_equals_lmforge_score(tiny, runs, tmp_path, capsys):
    from lmforge.cli.main import main

    _, _, ours, _ = tiny
    play = shipped.perplexity_rows()[0]["text"]
    path = tmp_path / "play.txt"
    path.write_text(play, encoding="utf-8")
    # the harness's rolling windows of max_length = 63 tokens are lmforge's windows of 64 moving by 63
    assert main(["score", str(ours), "--file", str(path), "--window", "64", "--stride", "63", "--no-progress"]) == 0
    scored = json.loads(capsys.readouterr().out)
    harness = runs["lmforge"]["results"]["shakespeare_ppl"]
    assert harness["bits_per_byte,none"] == pytest.approx(scored["bits_per_byte"], abs=TOL)
    assert scored["n_bytes"] == len(play.encode("utf-8"))
    assert math.log(harness["byte_perplexity,none"]) == pytest.approx(-scored["logprob"] / scored["n_bytes"], abs=TOL)
    words = len(re.split(r"\s+", play))  # how the harness counts words
    assert math.log(harness["word_perplexity,none"]) == pytest.approx(-scored["logprob"] / words, abs=TOL)


def test_hf_model_through_the_harness_agrees_on_every_shipped_task(runs):
    ours, theirs = runs["lmforge"], runs["hf"]
    assert set(ours["results"]) == set(theirs["results"]) == set(DECODER_TASKS)
    for task in DECODER_TASKS:
        for key, value in ours["results"][task].items():
            if not isinstance(value, float):
                continue
            other = theirs["results"][task][key]
            if "perplexity" in key:  # exp of a mean: compare the mean, the log
                assert math.log(value) == pytest.approx(math.log(other), abs=TOL), (task, key)
            else:
                assert value == pytest.approx(other, abs=TOL), (task, key)
        # and request by request: the same log-likelihood of every choice / document
        a = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b] == DOCS[task]
        for x, y in zip(a, b):
            if task == "shakespeare_restore":  # the same greedy text (see also the test below)
                assert x["resps"] == y["resps"], x["doc_id"]
                continue
            lx = [float(r[0][0] if isinstance(r[0], (list, tuple)) else r[0]) for r in x["resps"]]
            ly = [float(r[0][0] if isinstance(r[0], (list, tuple)) else r[0]) for r in y["resps"]]
            # (a whole play's log P, about -4e5 nats, is summed in fp32 by HF: 1e-9 of it relative)
            assert lx == pytest.approx(ly, abs=TOL, rel=1e-8), (task, x["doc_id"])
    assert 0.0 <= ours["results"]["shakespeare_cloze"]["acc,none"] <= 1.0


def test_hf_model_generates_the_same_text(tiny):
    from lm_eval.models.huggingface import HFLM

    model, tok, _, hf_dir = tiny
    ours = ev.LMForgeLM(model=model, tokenizer=tok, batch_size=2)
    theirs = HFLM(**ev.hf_model_args(hf_dir), batch_size=2, device="cpu")
    prompts = [r["prompt"] for r in shipped.restore_rows()[:3]] + ["ROMEO:\n" * 30]  # the last one is cut
    requests = _requests("generate_until", [(p, {"until": ["QQ"], "max_gen_toks": 12}) for p in prompts])
    got = ours.generate_until(requests, disable_tqdm=True)
    assert got == theirs.generate_until(requests, disable_tqdm=True) and all(got)


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_and_greedy_match_lmforge(tiny):
    from lmforge.infer import generate, score, score_ids

    model, tok, _, _ = tiny
    lm = ev.LMForgeLM(model=model, tokenizer=tok, batch_size=3)
    assert lm.prefix_token_id == tok.eos_id and lm.max_length == 63
    ctx = "HAMLET:\nTo be, or not to be"
    ids = tok.encode(ctx)
    greedy = generate(model, tok, [ctx], max_new_tokens=6, temperature=0, add_bos=False)[0].token_ids
    wrong = [(greedy[0] + 1) % len(tok)] + greedy[1:]
    out = lm._loglikelihood_tokens([(None, ids, greedy), (None, ids, wrong), (None, ids, greedy[:2])])
    for (lp, _), cont in zip(out, (greedy, wrong, greedy[:2])):
        ref = score_ids(model, [ids + cont])[0]
        assert lp == pytest.approx(sum(ref.token_logprobs[-len(cont) :]), abs=1e-5)
    assert [g for _, g in out] == [True, False, True]
    # text requests: the continuation is what encoding context + continuation adds; an empty
    # context means the start token (EOS for a model lmforge pretrained), as lmforge score does
    pairs = [(ctx, ", that is the question"), ("", "To be")]
    (lp, _), (lp_empty, _) = lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    cont = tok.encode(ctx + pairs[0][1])[len(ids) :]
    assert lp == pytest.approx(sum(score_ids(model, [ids + cont])[0].token_logprobs[-len(cont) :]), abs=1e-5)
    assert lp_empty == pytest.approx(score(model, tok, ["To be"])[0].logprob, abs=1e-5)
    long = "word " * 200  # longer than the context: windows, each token once
    rolled = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(long,)]), disable_tqdm=True)[0]
    assert rolled == pytest.approx(score(model, tok, [long], window=64, stride=63)[0].logprob, abs=1e-4)
    sliding = ev.LMForgeLM(model=model, tokenizer=tok, stride=32)
    assert sliding.loglikelihood_rolling(_requests("loglikelihood_rolling", [(long,)]), disable_tqdm=True)[
        0
    ] == pytest.approx(score(model, tok, [long], window=64, stride=32)[0].logprob, abs=1e-4)
    # add_start_token: contexts follow the start token too, as in lmforge's own scoring
    started = ev.LMForgeLM(model=model, tokenizer=tok, add_start_token="true")
    ((lp_started, _),) = started.loglikelihood(_requests("loglikelihood", pairs[:1]), disable_tqdm=True)
    ref = score_ids(model, [[tok.eos_id] + ids + cont])[0]
    assert lp_started == pytest.approx(sum(ref.token_logprobs[-len(cont) :]), abs=1e-5)
    assert abs(lp_started - lp) > 1e-4
    assert started.loglikelihood_rolling(_requests("loglikelihood_rolling", [(long,)]), disable_tqdm=True)[
        0
    ] == pytest.approx(rolled, abs=1e-6)


def test_generate_until_matches_lmforge_generate(tiny):
    from lmforge.infer import generate

    model, tok, _, _ = tiny
    lm = ev.LMForgeLM(model=model, tokenizer=tok, batch_size=2)
    prompts = ["ROMEO:\nBut soft", "JULIET:\n", "O"]
    kwargs = {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}
    got = lm.generate_until(_requests("generate_until", [(p, kwargs) for p in prompts]), disable_tqdm=True)
    want = [c.text for c in generate(model, tok, prompts, max_new_tokens=12, temperature=0, stop=["\n"], add_bos=False)]
    assert got == want and all("\n" not in g for g in got)
    started = ev.LMForgeLM(model=model, tokenizer=tok, add_start_token=True)  # prompts after the start token
    got = started.generate_until(_requests("generate_until", [(p, kwargs) for p in prompts]), disable_tqdm=True)
    assert got == [c.text for c in generate(model, tok, prompts, max_new_tokens=12, temperature=0, stop=["\n"])]
    long = "To be, or not to be " * 40  # longer than the context: the prompt keeps its last tokens
    text = lm.generate_until(_requests("generate_until", [(long, {"max_gen_toks": 8})]), disable_tqdm=True)[0]
    ids = tok.encode(long)[-(63 - 8) :]  # max_length 63 less the new tokens, as the harness's hf model cuts
    ref = generate(model, tok, [tok.decode(ids)], max_new_tokens=8, temperature=0, add_bos=False)[0]
    assert tok.encode(tok.decode(ids)) == ids and text == ref.text


def test_encoder_decoder_scores_target_given_source(tiny):
    from lmforge.infer import generate_ids, score

    _, tok, _, _ = tiny
    torch.manual_seed(1)
    s2s = build_model(
        ModelConfig.from_preset(
            "seq2seq-tiny", vocab_size=len(tok), pad_id=tok.pad_id, eos_id=tok.eos_id, bos_id=tok.bos_id
        )
    ).eval()
    lm = ev.LMForgeLM(model=s2s, tokenizer=tok)
    out = lm.loglikelihood(
        _requests("loglikelihood", [("to be or not to be", " that is the question")]), disable_tqdm=True
    )
    ref = score(s2s, tok, [("to be or not to be", " that is the question")], add_eos=False)[0]
    assert out[0][0] == pytest.approx(ref.logprob, abs=1e-5)
    with pytest.raises(LMForgeError, match="needs a decoder"):
        lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [("text",)]))
    gen = lm.generate_until(_requests("generate_until", [("to be", {"until": ["."], "max_gen_toks": 5})]))
    ids = generate_ids(
        s2s, torch.tensor([tok.encode("to be") + [tok.eos_id]]), max_new_tokens=5, do_sample=False
    ).token_lists()[0]
    assert gen == [tok.decode([t for t in ids if t != tok.eos_id], skip_special_tokens=True).split(".")[0]]
    # the tasks an encoder-decoder answers run through the harness
    res = ev.evaluate(s2s, shipped.SEQ2SEQ_TAG, tokenizer=tok, limit=3, bootstrap_iters=0)
    assert set(res["results"]) == {"shakespeare_genre", "shakespeare_cloze", "shakespeare_restore_seq2seq"}
    assert 0 <= res["results"]["shakespeare_restore_seq2seq"]["chrf,none"] <= 100


def test_cli_eval_prints_the_table_and_writes_json(tiny, tmp_path, capsys):
    from lmforge.cli.main import main

    _, _, ours, _ = tiny
    out = tmp_path / "res.json"
    assert (
        main(["eval", str(ours), "--tasks", "shakespeare_cloze", "--limit", "6", "--device", "cpu", "-o", str(out)])
        == 0
    )
    printed = capsys.readouterr()
    assert "shakespeare_cloze" in printed.out and "acc_norm" in printed.out and str(out) in printed.err
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["results"]["shakespeare_cloze"]["acc,none"] in [k / 6 for k in range(7)]
    assert main(["eval", str(ours), "--tasks", " ,"]) == 2
    assert "tasks" in capsys.readouterr().err
    assert main(["eval", str(ours), "--model-args", "window=3"]) == 2
    assert "window" in capsys.readouterr().err
    # a harness task whose data is on the hub: with the network off, one line says so
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: lmforge-test/not-cached\ntest_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n",
        encoding="utf-8",
    )
    assert main(["eval", str(ours), "--tasks", "hub_task", "--include-path", str(tmp_path / "tasks")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: tasks:") and "not on this machine" in err[-1]


def test_missing_extra_is_one_line_naming_the_install_command(tiny, monkeypatch, capsys):
    from lmforge.cli.main import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now fails as when it is not installed
    assert main(["eval", str(tiny[2])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and 'pip install -e ".[eval]"' in err
    with pytest.raises(LMForgeError, match=r'pip install -e "\.\[eval\]"'):
        ev.evaluate(tiny[2], ev.TAG)
