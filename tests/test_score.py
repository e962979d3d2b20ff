"""Scoring: the chain rule, sliding windows, pseudo-log-likelihood, log P(y | x), HF parity, the
text API (BOS convention, bits per byte) and the score CLI verb."""

import csv
import io
import json
import math

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.infer import conditional_logprobs, plan_windows, pseudo_log_likelihood, score, score_ids, summarize
from lmforge.models import build_model, save_model


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(1)
    return build_model(ModelConfig.from_preset("llama-tiny")).eval()


@pytest.fixture(scope="module")
def recipe():
    """The training recipe's model switches (qk_norm, relu2, zero_init_proj, soft-capped logits)."""
    torch.manual_seed(2)
    cfg = ModelConfig.from_preset(
        "llama-tiny", qk_norm=True, activation="relu2", zero_init_proj=True, logit_softcap=2.0
    )
    model = build_model(cfg).eval()
    with torch.no_grad():  # weights in the zero-initialised projections, as a trained model has
        for name, mod in model.named_modules():
            if name.endswith(("attn.proj", "mlp.proj")):
                mod.weight.normal_(0.0, 0.05)
    return model


# ---- the chain rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt", "llama", "recipe"])
def test_chain_rule_with_kv_cache(name, request):
    """log P(x) from one scoring pass == the sum of one-step-at-a-time log-probs with the KV cache."""
    model = request.getfixturevalue(name)
    ids = torch.randint(0, 256, (30,))
    res = score_ids(model, [ids])[0]
    cache = model.new_cache(1, 30)
    steps = []
    with torch.no_grad():
        for t in range(29):
            logits = model(ids[None, t : t + 1], cache=cache).logits[0, -1]
            steps.append(float(logits.log_softmax(-1)[ids[t + 1]]))
    assert res.n_tokens == 29
    assert abs(res.logprob - sum(steps)) <= 1e-4
    assert max(abs(a - b) for a, b in zip(res.token_logprobs, steps)) <= 1e-5
    assert res.token_ids == ids[1:].tolist()
    assert math.isclose(res.perplexity, math.exp(-sum(steps) / 29), rel_tol=1e-5)


# ---- sliding windows ----------------------------------------------------------------------------


def test_plan_windows_scores_every_token_once():
    for n, w, s in [(100, 16, 5), (17, 16, 15), (16, 16, 8), (2, 4, 1), (64, 8, 7), (1, 8, 4)]:
        wins = plan_windows(n, w, s)
        targets = [t for b, e, f in wins for t in range(f, e)]
        assert targets == list(range(1, n))  # each once, in order
        for k, (b, e, f) in enumerate(wins):
            assert e - b <= w and b < f <= e
            if k:
                assert f - b >= w - s or b == 0  # at least window - stride tokens of context
    with pytest.raises(LMForgeError, match="stride"):
        plan_windows(10, 4, 4)


def test_window_at_least_length_equals_plain(gpt):
    ids = torch.randint(0, 256, (40,))
    plain = score_ids(gpt, [ids])[0]
    for w, s in [(40, 10), (64, 63), (48, 1)]:
        r = score_ids(gpt, [ids], window=w, stride=s)[0]
        assert r.n_tokens == 39
        assert r.token_logprobs == pytest.approx(plain.token_logprobs, abs=1e-5)


def _naive_sliding(model, ids, window, stride):
    """Reference: each token scored by its own forward over exactly its window's context."""
    n, out = len(ids), {}
    end = min(window, n)
    wins = [(0, end, 1)]
    while end < n:
        new_end = min(end + stride, n)
        wins.append((max(0, new_end - window), new_end, end))
        end = new_end
    with torch.no_grad():
        for b, e, f in wins:
            for t in range(f, e):
                assert t not in out
                logits = model(ids[None, b:t]).logits[0, -1]
                out[t] = float(logits.log_softmax(-1)[ids[t]])
    return [out[t] for t in range(1, n)]


@pytest.mark.parametrize("window,stride", [(16, 5), (24, 23), (10, 1)])
def test_sliding_window_matches_naive_loop(gpt, window, stride):
    ids = torch.randint(0, 256, (150,))  # longer than the model's context (64)
    res = score_ids(gpt, [ids], window=window, stride=stride, batch_size=4)[0]
    assert res.n_tokens == 149  # every token but the first, exactly once
    ref = _naive_sliding(gpt, ids, window, stride)
    assert res.token_logprobs == pytest.approx(ref, abs=1e-4)
    assert abs(res.logprob - sum(ref)) <= 1e-3


def test_long_text_default_window_is_the_context(gpt):
    ids = torch.randint(0, 256, (200,))
    res = score_ids(gpt, [ids])[0]  # window 64, stride 32
    assert res.n_tokens == 199
    assert res.token_logprobs == pytest.approx(_naive_sliding(gpt, ids, 64, 32), abs=1e-4)
    with pytest.raises(LMForgeError, match="max_positions"):
        score_ids(gpt, [ids], window=65)


def test_batching_does_not_change_scores(gpt):
    seqs = [torch.randint(0, 256, (n,)) for n in (5, 90, 2, 33, 1, 64)]
    one = score_ids(gpt, seqs, window=32, stride=8, batch_size=1)
    many = score_ids(gpt, seqs, window=32, stride=8, batch_size=5)
    for a, b, s in zip(one, many, seqs):
        assert a.n_tokens == b.n_tokens == max(len(s) - 1, 0)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


# ---- pseudo-log-likelihood -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(2)
    cfg = ModelConfig.from_preset("bert-tiny", pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    return build_model(cfg).eval()


def test_pll_matches_masking_loop(bert):
    seqs = [[1, 10, 11, 12, 13, 2], [1, 50, 60, 2], [1, 7, 8, 9, 10, 11, 12, 13, 14, 2]]
    res = pseudo_log_likelihood(bert, seqs, batch_size=5)  # copies of different lengths share batches
    with torch.no_grad():
        for seq, r in zip(seqs, res):
            ref = []
            for i in range(1, len(seq) - 1):  # [CLS] and [SEP] are not scored
                x = torch.tensor([seq])
                x[0, i] = 3
                ref.append(float(bert(x).logits[0, i].log_softmax(-1)[seq[i]]))
            assert r.n_tokens == len(seq) - 2 and r.kind == "pll"
            assert r.token_logprobs == pytest.approx(ref, abs=1e-5)
            assert abs(r.logprob - sum(ref)) <= 1e-4
            assert math.isclose(r.perplexity, math.exp(-sum(ref) / len(ref)), rel_tol=1e-5)


# ---- encoder-decoder: log P(y | x) ------------------------------------------------------------------


def test_conditional_logprob_matches_model_loss():
    torch.manual_seed(3)
    model = build_model(ModelConfig.from_preset("seq2seq-tiny", pad_id=0, bos_id=1, eos_id=2)).eval()
    srcs = [[5, 6, 7, 2], [9, 10, 11, 12, 13, 14, 2]]
    tgts = [[20, 21, 22, 23, 2], [30, 2]]
    res = conditional_logprobs(model, srcs, tgts, batch_size=2)
    with torch.no_grad():
        for s, t, r in zip(srcs, tgts, res):
            out = model(input_ids=torch.tensor([s]), labels=torch.tensor([t]))
            assert r.n_tokens == len(t)
            assert abs(r.logprob - (-float(out.loss) * len(t))) <= 1e-4


# ---- HF parity --------------------------------------------------------------------------------------


def test_hf_gpt2_token_logprobs_match():
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import from_hf

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    ).eval()
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 1000, (3, 50))
    with torch.no_grad():
        ref = hf(ids).logits.float().log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    res = score_ids(ours, list(ids), batch_size=2)
    got = torch.tensor([r.token_logprobs for r in res])
    assert (got - ref).abs().max() <= 1e-4


# ---- text in: BOS convention, bits per byte, CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def char_models(tmp_path_factory):
    from lmforge.tokenizer import train_tokenizer

    text = ["To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer é"]
    with_bos = train_tokenizer("char", text)
    no_bos = train_tokenizer("char", text, special_tokens=["<pad>", "<unk>"])
    out = {}
    for name, tok in (("bos", with_bos), ("nobos", no_bos)):
        torch.manual_seed(4)
        cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=64, bos_id=tok.bos_id, pad_id=tok.pad_id)
        model = build_model(cfg).eval()
        out[name] = (model, tok, save_model(model, tmp_path_factory.mktemp("m") / name, tokenizer=tok))
    return out


def test_text_score_bos_convention_and_bits_per_byte(char_models):
    model, tok, _ = char_models["bos"]
    text = "To be, é"
    r = score(model, tok, [text])[0]
    assert tok.bos_id is not None
    assert r.n_tokens == len(tok.encode(text))  # BOS in front: every real token is scored
    assert r.n_bytes == len(text.encode("utf-8")) == 9
    assert math.isclose(r.bits_per_byte, -r.logprob / (math.log(2) * 9), rel_tol=1e-9)
    ref = score_ids(model, [[tok.bos_id] + tok.encode(text)])[0]
    assert r.logprob == pytest.approx(ref.logprob, abs=1e-6)
    model, tok, _ = char_models["nobos"]
    r = score(model, tok, text)[0]
    assert tok.bos_id is None and r.n_tokens == len(tok.encode(text)) - 1  # first token unscored
    s = summarize([r, r])
    assert s["n_tokens"] == 2 * r.n_tokens and math.isclose(s["perplexity"], r.perplexity, rel_tol=1e-9)


def test_score_encoder_and_seq2seq_texts(tmp_path):
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer("wordpiece", ["the cat sat on the mat"] * 3, vocab_size=60)
    torch.manual_seed(5)
    enc = build_model(
        ModelConfig.from_preset(
            "bert-tiny",
            vocab_size=tok.vocab_size,
            pad_id=tok.pad_id,
            mask_id=tok.mask_id,
            cls_id=tok.cls_id,
            sep_id=tok.sep_id,
        )
    ).eval()
    r = score(enc, tok, ["the cat sat"])[0]
    assert r.kind == "pll" and r.n_tokens == len(tok.encode("the cat sat"))
    s2s = build_model(
        ModelConfig.from_preset("seq2seq-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id)
    ).eval()
    r = score(s2s, tok, [("the cat", "sat on the mat")])[0]
    assert r.kind == "conditional" and r.n_tokens == len(tok.encode("sat on the mat")) + 1  # + EOS
    with pytest.raises(LMForgeError, match="pairs"):
        score(s2s, tok, ["just a string"])


def test_cli_score_jsonl_csv_and_files(char_models, tmp_path, capsys):
    from lmforge.cli.main import main

    _, _, directory = char_models["bos"]
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"body": "To be"}) + "\n\n" + json.dumps({"body": "or not"}) + "\n", encoding="utf-8")
    assert main(["score", str(directory), "--jsonl", str(data), "--field", "body", "--per-token"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(x) for x in captured.out.splitlines()]
    assert [r["n_tokens"] for r in rows] == [5, 6]
    assert rows[0]["tokens"] == list("To be") and len(rows[0]["token_logprobs"]) == 5
    assert "perplexity" in captured.err
    long = tmp_path / "long.txt"
    long.write_text("to be or not to be " * 10, encoding="utf-8")  # 190 chars > the context of 64
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                str(directory),
                "--file",
                str(long),
                "--text",
                "To be",
                "--window",
                "32",
                "--stride",
                "16",
                "--format",
                "csv",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    table = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [int(r["n_tokens"]) for r in table] == [5, 190]
    assert float(table[1]["bits_per_byte"]) > 0
    capsys.readouterr()
    assert main(["score", str(directory), "--jsonl", str(data), "--field", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
