"""Generation: greedy / sampling / beam search, KV cache vs full recompute, left padding, HF parity,
stop strings and streaming, fill-mask, and the generate / fill-mask CLI verbs."""

import json

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.infer import fill_mask, fill_mask_ids, generate, generate_ids
from lmforge.infer.prompts import pad_batch
from lmforge.infer.sampling import apply_repetition_penalty, top_k_filter, top_p_filter
from lmforge.models import build_model, save_model


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(1)
    return build_model(ModelConfig.from_preset("llama-tiny")).eval()


@pytest.fixture(scope="module")
def s2s():
    torch.manual_seed(2)
    return build_model(ModelConfig.from_preset("seq2seq-tiny", bos_id=1, eos_id=2, pad_id=0)).eval()


def _left_padded(prompts, pad=0):
    return pad_batch([p.tolist() for p in prompts], pad, "left")


# ---- greedy with and without the cache -----------------------------------------------------


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_greedy_cache_equals_recompute(name, request):
    model = request.getfixturevalue(name)
    ids = torch.randint(0, 256, (2, 7))
    a = generate_ids(model, ids, max_new_tokens=24, do_sample=False)
    b = generate_ids(model, ids, max_new_tokens=24, do_sample=False, use_cache=False)
    assert a.tokens.shape == (2, 24)
    assert torch.equal(a.tokens, b.tokens)


def test_greedy_cache_equals_recompute_left_padded(gpt):
    ids, mask = _left_padded([torch.randint(0, 256, (4,)), torch.randint(0, 256, (9,))])
    a = generate_ids(gpt, ids, mask, max_new_tokens=16, do_sample=False)
    b = generate_ids(gpt, ids, mask, max_new_tokens=16, do_sample=False, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)


def test_greedy_cache_equals_recompute_seq2seq(s2s):
    src, mask = pad_batch([[5, 6, 7, 8, 9, 2], [11, 12, 2]], 0, "right")
    a = generate_ids(s2s, src, mask, max_new_tokens=12, do_sample=False, eos_id=None)
    b = generate_ids(s2s, src, mask, max_new_tokens=12, do_sample=False, eos_id=None, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    # the padded source gives what the source alone gives
    alone = generate_ids(s2s, torch.tensor([[11, 12, 2]]), max_new_tokens=12, do_sample=False, eos_id=None)
    assert torch.equal(a.tokens[1], alone.tokens[0])


def test_greedy_is_the_argmax_chain(gpt):
    """Each greedy token is the argmax of a plain full forward over the sequence so far."""
    ids = torch.randint(0, 256, (1, 5))
    out = generate_ids(gpt, ids, max_new_tokens=6, do_sample=False, output_logprobs=True)
    seq = ids
    with torch.no_grad():
        for t in range(6):
            logits = gpt(seq).logits[0, -1]
            assert int(logits.argmax()) == int(out.tokens[0, t])
            assert abs(float(logits.log_softmax(-1).max()) - float(out.logprobs[0, t])) < 1e-5
            seq = torch.cat([seq, out.tokens[:, t : t + 1]], dim=1)


# ---- beam width 1, top-k 1, seeds ------------------------------------------------------------


def test_beam_width_one_equals_greedy(gpt, s2s):
    ids = torch.randint(0, 256, (3, 6))
    greedy = generate_ids(gpt, ids, max_new_tokens=15, do_sample=False)
    beam = generate_ids(gpt, ids, max_new_tokens=15, num_beams=1, beam_search=True)
    assert torch.equal(greedy.tokens, beam.tokens)
    src = torch.randint(3, 256, (2, 5))
    g = generate_ids(s2s, src, max_new_tokens=10, do_sample=False, eos_id=None)
    b = generate_ids(s2s, src, max_new_tokens=10, num_beams=1, beam_search=True, eos_id=None)
    assert torch.equal(g.tokens, b.tokens)


def test_top_k_one_equals_greedy(gpt):
    ids = torch.randint(0, 256, (2, 6))
    greedy = generate_ids(gpt, ids, max_new_tokens=15, do_sample=False)
    sampled = generate_ids(gpt, ids, max_new_tokens=15, do_sample=True, temperature=0.7, top_k=1, seed=123)
    assert torch.equal(greedy.tokens, sampled.tokens)


def test_seed_reproducible_and_global_rng_untouched(gpt):
    ids = torch.randint(0, 256, (2, 4))
    state = torch.get_rng_state()
    kw = dict(max_new_tokens=20, temperature=1.3, top_k=50, top_p=0.95, repetition_penalty=1.2)
    a = generate_ids(gpt, ids, seed=7, **kw)
    b = generate_ids(gpt, ids, seed=7, **kw)
    c = generate_ids(gpt, ids, seed=8, **kw)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG was not used


def test_temperature_zero_is_greedy(gpt):
    ids = torch.randint(0, 256, (1, 4))
    assert torch.equal(
        generate_ids(gpt, ids, max_new_tokens=8, temperature=0).tokens,
        generate_ids(gpt, ids, max_new_tokens=8, do_sample=False).tokens,
    )


# ---- batches of different lengths ------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_left_padded_batch_equals_each_alone(name, request):
    model = request.getfixturevalue(name)
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 11, 7)]
    ids, mask = _left_padded(prompts)
    batch = generate_ids(model, ids, mask, max_new_tokens=14, do_sample=False)
    for i, p in enumerate(prompts):
        alone = generate_ids(model, p[None], max_new_tokens=14, do_sample=False)
        assert torch.equal(batch.tokens[i], alone.tokens[0]), i


def test_left_padded_beam_equals_each_alone(gpt):
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 8)]
    ids, mask = _left_padded(prompts)
    batch = generate_ids(gpt, ids, mask, max_new_tokens=10, num_beams=3)
    for i, p in enumerate(prompts):
        alone = generate_ids(gpt, p[None], max_new_tokens=10, num_beams=3)
        assert torch.equal(batch.tokens[i], alone.tokens[0])
        assert abs(float(batch.scores[i]) - float(alone.scores[0])) < 1e-4


def test_right_padding_refused(gpt):
    ids, mask = pad_batch([[1, 2, 3], [4]], 0, "right")
    with pytest.raises(LMForgeError, match="left-padded"):
        generate_ids(gpt, ids, mask, max_new_tokens=2)


# ---- EOS, stop rows, limits ------------------------------------------------------------------


def test_eos_stops_a_row_and_pads_after(gpt):
    ids = torch.randint(0, 256, (1, 5))
    free = generate_ids(gpt, ids, max_new_tokens=12, do_sample=False, eos_id=None)
    eos = int(free.tokens[0, 3])
    first = int((free.tokens[0] == eos).nonzero()[0])
    out = generate_ids(gpt, ids, max_new_tokens=12, do_sample=False, eos_id=eos, pad_id=0)
    assert out.lengths.tolist() == [first + 1]
    assert out.token_lists()[0] == free.tokens[0, : first + 1].tolist()
    assert bool(out.finished[0])


def test_callback_can_stop_rows(gpt):
    ids = torch.randint(0, 256, (2, 4))
    seen = []

    def cb(step, tokens):
        seen.append(tokens.clone())
        return [step == 2, False]

    out = generate_ids(gpt, ids, max_new_tokens=8, do_sample=False, eos_id=None, pad_id=0, callback=cb)
    assert out.lengths.tolist() == [3, 8]
    assert out.tokens[0, 3:].eq(0).all()
    assert len(seen) == 8


def test_context_limit_and_encoder_refused(gpt):
    with pytest.raises(LMForgeError, match="max_positions"):
        generate_ids(gpt, torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10)
    enc = build_model(ModelConfig.from_preset("bert-tiny", mask_id=4))
    with pytest.raises(LMForgeError, match="fill-mask"):
        generate_ids(enc, torch.zeros(1, 3, dtype=torch.long))


# ---- processors ------------------------------------------------------------------------------


def test_processors_follow_hf_semantics():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    present = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, present, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert top_k_filter(logits, 2).isinf().tolist() == [[False, True, True, False]]
    probs = logits.softmax(-1)[0]  # 3.0 -> 0.66, 2.0 -> 0.24, ...
    kept = ~top_p_filter(logits, 0.8).isinf()[0]
    assert kept.tolist() == [True, False, False, True]
    assert float(probs[kept].sum()) >= 0.8
    assert (~top_p_filter(logits, 0.5).isinf()).sum() == 1  # always at least the best one


def test_repetition_penalty_changes_greedy_output(gpt):
    ids = torch.randint(0, 256, (1, 4))
    plain = generate_ids(gpt, ids, max_new_tokens=20, do_sample=False)
    penal = generate_ids(gpt, ids, max_new_tokens=20, do_sample=False, repetition_penalty=5.0)
    assert len(set(penal.tokens[0].tolist())) >= len(set(plain.tokens[0].tolist()))
    assert len(set(penal.tokens[0].tolist())) == 20  # a huge penalty: never the same token twice here


# ---- HF parity -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pair():
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import from_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128, bos_token_id=None, eos_token_id=None
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    return hf, from_hf(hf).eval()


def test_hf_greedy_parity_single_and_left_padded(hf_pair):
    hf, ours = hf_pair
    prompts = [torch.randint(0, 1000, (n,)) for n in (5, 12, 8)]
    ids, mask = _left_padded(prompts)
    with torch.inference_mode():
        single = hf.generate(
            prompts[0][None],
            attention_mask=torch.ones(1, 5, dtype=torch.long),
            max_new_tokens=25,
            do_sample=False,
            pad_token_id=0,
        )
        batch = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=25,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    a = generate_ids(ours, prompts[0][None], max_new_tokens=25, do_sample=False)
    assert torch.equal(a.tokens, single[:, 5:])
    b = generate_ids(ours, ids, mask, max_new_tokens=25, do_sample=False, output_logprobs=True)
    assert torch.equal(b.tokens, batch.sequences[:, ids.shape[1] :])
    hf_lp = torch.stack([lg.float().log_softmax(-1) for lg in batch.logits], 1)  # (B, N, V)
    hf_lp = hf_lp.gather(2, b.tokens[:, :, None]).squeeze(2)
    assert (hf_lp - b.logprobs).abs().max() < 1e-4


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_hf_beam_search_parity(hf_pair, length_penalty):
    hf, ours = hf_pair
    prompts = [torch.randint(0, 1000, (n,)) for n in (4, 9)]
    ids, mask = _left_padded(prompts)
    free = generate_ids(ours, ids, mask, max_new_tokens=12, do_sample=False)
    eos = int(free.tokens[0, 2])  # a token greedy decoding emits: some beams end early
    with torch.inference_mode():
        h = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            num_beams=3,
            pad_token_id=0,
            eos_token_id=eos,
            length_penalty=length_penalty,
            output_scores=True,
            return_dict_in_generate=True,
        )
    o = generate_ids(
        ours, ids, mask, max_new_tokens=12, num_beams=3, eos_id=eos, pad_id=0, length_penalty=length_penalty
    )
    hf_new = h.sequences[:, ids.shape[1] :]
    for row, hf_row in zip(o.token_lists(), hf_new.tolist()):  # HF fills the tail after EOS with EOS
        assert row == hf_row[: len(row)]
        assert len(row) == len(hf_row) or row[-1] == eos
    assert (o.scores - h.sequences_scores).abs().max() < 1e-4


# ---- text in, text out: stop strings and streaming ----------------------------------------------


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer("char", ["the quick brown fox jumps over the lazy dog. THE END!"])
    torch.manual_seed(3)
    cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=64, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    model = build_model(cfg).eval()
    directory = save_model(model, tmp_path_factory.mktemp("models") / "char-gpt", tokenizer=tok)
    return model, tok, directory


def test_generate_text_stream_and_stop(char_lm):
    model, tok, _ = char_lm
    pieces = []
    out = generate(model, tok, "the ", max_new_tokens=30, seed=0, stream=lambda i, t: pieces.append((i, t)))
    assert "".join(t for _, t in pieces) == out[0].text
    full = out[0].text
    assert len(full) >= 3
    stop = full[2:4]
    k = full.find(stop)
    stopped = generate(model, tok, "the ", max_new_tokens=30, seed=0, stop=[stop])[0]
    assert stopped.text == full[:k]
    assert stopped.finish_reason == "stop"
    # batch of prompts, greedy: same as one at a time
    many = generate(model, tok, ["the ", "a lazy dog"], max_new_tokens=10, temperature=0)
    one = generate(model, tok, ["a lazy dog"], max_new_tokens=10, temperature=0)
    assert many[1].token_ids == one[0].token_ids


def test_generate_beam_text(char_lm):
    model, tok, _ = char_lm
    out = generate(model, tok, ["the ", "fox"], max_new_tokens=8, num_beams=3)
    assert len(out) == 2 and all(c.score is not None for c in out)


# ---- fill-mask ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_lm(tmp_path_factory):
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer(
        "wordpiece", ["paris is the capital of france and berlin is the capital of germany"] * 5, vocab_size=80
    )
    torch.manual_seed(4)
    cfg = ModelConfig.from_preset(
        "bert-tiny",
        vocab_size=tok.vocab_size,
        pad_id=tok.pad_id,
        mask_id=tok.mask_id,
        cls_id=tok.cls_id,
        sep_id=tok.sep_id,
    )
    model = build_model(cfg).eval()
    directory = save_model(model, tmp_path_factory.mktemp("models") / "bert", tokenizer=tok)
    return model, tok, directory


def test_fill_mask_top_k(bert_lm):
    model, tok, _ = bert_lm
    res = fill_mask(model, tok, "paris is the [MASK] of [MASK]", top_k=4)
    assert len(res) == 2 and all(len(r) == 4 for r in res)
    ids = [tok.cls_id] + tok.encode("paris is the") + [tok.mask_id] + tok.encode("of france") + [tok.sep_id]
    cands = fill_mask_ids(model, ids, top_k=3)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0, ids.index(tok.mask_id)].softmax(-1)
    top = probs.topk(3)
    assert [c[0] for c in cands[0]] == top.indices.tolist()
    assert abs(cands[0][0][1] - float(top.values[0])) < 1e-6
    assert sum(p for _, p in cands[0]) <= 1.0


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_generate_and_fill_mask(char_lm, bert_lm, capsys):
    from lmforge.cli.main import main

    _, _, dec_dir = char_lm
    assert main(["generate", str(dec_dir), "--prompt", "the ", "--max-new-tokens", "12", "--seed", "1"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.startswith("the ")
    assert (
        main(
            [
                "generate",
                str(dec_dir),
                "--prompt",
                "the ",
                "--prompt",
                "fox",
                "--max-new-tokens",
                "5",
                "--greedy",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["the ", "fox"]
    assert main(["generate", str(dec_dir), "--prompt", "x", "--num-beams", "2", "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    _, _, enc_dir = bert_lm
    assert main(["fill-mask", str(enc_dir), "paris is the [MASK] of france", "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["masks"]) == 1 and len(out["masks"][0]) == 3
    assert main(["fill-mask", str(dec_dir), "the [MASK]"]) == 2  # a decoder: a clear error, exit 2
    assert "encoder" in capsys.readouterr().err
