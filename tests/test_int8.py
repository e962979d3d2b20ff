"""int8 inference (lmforge.models.quant, ``--dtype int8``): the quantised weights, and
int8 outputs against fp32 within stated tolerances.

Tolerances (per-channel symmetric int8 moves each weight by at most half its row's scale, 1/254 of
the row's largest entry): logits within 2% of the largest fp32 logit (about 0.5% measured on these
models); per-token log-probabilities within 0.05 nats, bits per byte of a text within 0.01 (the
issue's bound); greedy tokens of a trained tiny model equal to fp32's (its fp32 top-1 margins are
far above the logit error). The kernel itself (torch's int8 matmul) equals F.linear on the
dequantised weight up to float rounding; fbgemm's dynamic kernel (a decode step's few fp32 rows)
within the rounding of its 8-bit activations.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.infer import decoder_token_logprobs, generate_ids, load_for_inference, score
from lmforge.infer.prompts import pad_batch
from lmforge.models import build_model, save_model
from lmforge.models.fast_decode import FastDecodeStep
from lmforge.models.quant import (
    KERNEL_MAX_ROWS,
    Int8Linear,
    Int8LMHead,
    _reduce_range,
    int8_linear,
    is_quantized,
    quantize_int8,
    quantize_weight,
)
from lmforge.nn import LMHead

TEXT = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. "
PROMPTS = ["the quick", "a stitch", "over the l", "dog. "]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, tokenizer, directory) of a gpt-tiny trained for a few seconds on one repeated text
    (a char tokenizer): confident predictions, so that greedy paths have large margins."""
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer("char", [TEXT])
    ids = torch.tensor(tok.encode(TEXT * 12))
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "gpt-tiny", vocab_size=tok.vocab_size, bos_id=tok.bos_id, pad_id=tok.pad_id, eos_id=tok.eos_id
    )
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - 65, (16,))
        x = torch.stack([ids[s : s + 64] for s in starts])
        y = torch.stack([ids[s + 1 : s + 65] for s in starts])
        loss = model(x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, save_model(model, tmp_path_factory.mktemp("int8") / "gpt", tokenizer=tok)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(1)
    return build_model(ModelConfig.from_preset("llama-tiny")).eval()


# ---- the quantised weights ----------------------------------------------------------------------


def test_quantize_weight_is_int8_with_one_scale_per_output_channel():
    w = torch.randn(48, 20)
    w[3] = 0.0  # an all-zero row
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == (48, 20) and q.is_contiguous()
    assert scale.dtype == torch.float32 and scale.shape == (48,)
    assert int(q.abs().max()) == 127  # each row's largest entry maps to +-127
    assert bool((q[3] == 0).all()) and float(scale[3]) == 1.0
    err = (scale[:, None] * q.float() - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # round to nearest: half a step at most
    q16, s16 = quantize_weight(w.bfloat16())
    assert q16.dtype == torch.int8 and s16.dtype == torch.bfloat16


def test_int8_kernel_equals_f_linear_on_the_dequantised_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40)
    layer = Int8Linear.from_linear(lin)
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (40, 24) and layer.scale.shape == (40,)
    assert not list(layer.parameters())  # buffers only: nothing here trains
    w = layer.dequantized()
    # the weight-only kernel (no packed weight) and the many-rows path: the dequantised product
    for x in (torch.randn(5, 24), torch.randn(2, 3, 24), torch.randn(24, 4).t(), torch.randn(0, 24)):
        got = int8_linear(x, layer.qweight, layer.scale, layer.bias)
        assert torch.allclose(got, F.linear(x, w, lin.bias), rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 24)
    assert torch.allclose(int8_linear(x, layer.qweight, layer.scale, None), x @ w.t(), rtol=1e-5, atol=1e-5)
    x = torch.randn(KERNEL_MAX_ROWS + 1, 24)
    assert torch.allclose(layer(x), F.linear(x, w, lin.bias), rtol=1e-5, atol=1e-5)
    # in bf16 (the scales follow the model's dtype, q stays int8); 24 input features take the fp32
    # detour around the kernel's bf16 crash, 32 the kernel's own bf16 path
    for k in (24, 32):
        fp32 = Int8Linear.from_linear(torch.nn.Linear(k, 40))
        half = copy.deepcopy(fp32).to(torch.bfloat16)
        assert half.qweight.dtype == torch.int8 and half.scale.dtype == torch.bfloat16
        x = torch.randn(4, k)
        assert half(x.bfloat16()).dtype == torch.bfloat16
        assert (half(x.bfloat16()).float() - fp32(x)).abs().max() < 0.05


def test_dynamic_int8_kernel_is_within_the_activation_rounding_of_the_dequantised_product():
    """A few fp32 rows go through fbgemm's dynamic kernel: the activations rounded to 8 bits (one
    step of (max - min) / 255 over the call, 7 bits without VNNI), so output n is off by at most half
    a step times sum_k |w[n, k]| (the weights are the same int8 values), plus float rounding."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    layer = Int8Linear.from_linear(lin)
    if layer.packed is None:
        pytest.skip("this torch build's quantised engine cannot pack int8 weights (the weight-only kernel is used)")
    w = layer.dequantized()
    for x in (torch.randn(1, 64), torch.randn(2, 3, 64), torch.randn(KERNEL_MAX_ROWS, 64)):
        step = float(x.max().clamp(min=0) - x.min().clamp(max=0)) / (127 if _reduce_range() else 255)
        bound = step / 2 * w.abs().sum(dim=1) + 1e-4
        err = (layer(x) - F.linear(x, w, lin.bias)).abs().reshape(-1, 48)
        assert bool((err <= bound).all()), float((err - bound).max())
        assert not torch.equal(layer(x), F.linear(x, w, lin.bias))  # it is the int8 kernel
    # a load_state_dict (new weights in the same buffers) repacks
    other = Int8Linear.from_linear(torch.nn.Linear(64, 48))
    layer.load_state_dict(other.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(layer(x), other(x))


@pytest.mark.parametrize("include_head", [True, False])
def test_quantize_int8_replaces_the_linears_and_the_head_or_not(trained, llama, include_head):
    for base in (trained[0], llama):  # a tied head (gpt) and an untied one (llama)
        model = quantize_int8(copy.deepcopy(base), include_head=include_head)
        assert is_quantized(model) and not is_quantized(base)
        for block in model.transformer.blocks:
            for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
                assert type(lin) is Int8Linear
                assert lin.qweight.dtype == torch.int8 and lin.qweight.shape == (lin.out_features, lin.in_features)
                assert lin.scale.shape == (lin.out_features,) and lin.scale.dtype == torch.float32
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
        head = model.lm_head
        if include_head:
            assert type(head) is Int8LMHead and head.qweight.shape == (base.config.vocab_size, base.config.d_model)
        else:
            assert type(head) is LMHead and head.weight.dtype == torch.float32
        # the embedding stays in float, unchanged (a tied head gets its own int8 copy)
        emb = model.transformer.tok_emb.weight
        assert emb.dtype == torch.float32 and torch.equal(emb, base.transformer.tok_emb.weight)
        int8_bytes = sum(b.numel() for b in model.buffers() if b.dtype == torch.int8)
        body = sum(p.numel() for n, p in base.named_parameters() if n.startswith("transformer.blocks") and p.dim() == 2)
        assert int8_bytes == body + (base.config.vocab_size * base.config.d_model if include_head else 0)


def test_quantize_int8_refuses_another_device_in_one_line():
    with torch.device("meta"):
        model = build_model(ModelConfig.from_preset("gpt-tiny"))
    with pytest.raises(ConfigError, match="CPU only") as e:
        quantize_int8(model)
    assert "\n" not in str(e.value)


# ---- int8 against fp32 ------------------------------------------------------------------------------


@pytest.mark.parametrize("include_head", [True, False])
def test_int8_logits_within_tolerance_of_fp32(trained, llama, include_head):
    ids = torch.tensor([trained[1].encode(TEXT[:60])])
    for base, x in ((trained[0], ids), (llama, torch.randint(0, 256, (2, 40)))):
        model = quantize_int8(copy.deepcopy(base), include_head=include_head)
        with torch.no_grad():
            ref, got = base(x).logits, model(x).logits
        assert (got - ref).abs().max() <= 0.02 * ref.abs().max()
        assert not torch.equal(got, ref)  # it did change something


def test_int8_greedy_tokens_equal_fp32_on_a_trained_model(trained):
    model, tok, _ = trained
    q = quantize_int8(copy.deepcopy(model))
    for p in PROMPTS:
        ids = torch.tensor([tok.encode(p)])
        ref = generate_ids(model, ids, max_new_tokens=30, do_sample=False, eos_id=None, output_logprobs=True)
        got = generate_ids(q, ids, max_new_tokens=30, do_sample=False, eos_id=None, output_logprobs=True)
        assert torch.equal(got.tokens, ref.tokens), p
        assert (got.logprobs - ref.logprobs).abs().max() < 0.05


def test_int8_scoring_within_tolerance_of_fp32(trained):
    model, tok, _ = trained
    q = quantize_int8(copy.deepcopy(model))
    seqs = [tok.encode(TEXT * 2)[:64], tok.encode("a lazy fox saves time")]
    for ref, got in zip(decoder_token_logprobs(model, seqs), decoder_token_logprobs(q, seqs)):
        assert ref.shape == got.shape and (got - ref).abs().max() < 0.05
    texts = ["the lazy dog jumps", "a stitch in time saves nine.", "unrelated words here"]
    for ref, got in zip(score(model, tok, texts), score(q, tok, texts)):
        assert abs(got.bits_per_byte - ref.bits_per_byte) < 0.01


@pytest.mark.parametrize("include_head", [True, False])
def test_fast_decode_step_takes_int8_models(trained, llama, include_head):
    """The fast decode step computes an int8 model as its own forward does (both through the int8
    kernel), with a quantised or a float head, with and without padding."""
    for base in (trained[0], llama):
        model = quantize_int8(copy.deepcopy(base), include_head=include_head)
        assert FastDecodeStep.supported(model)
        ids, mask = pad_batch([torch.randint(0, 30, (3,)).tolist(), torch.randint(0, 30, (6,)).tolist()], 0, "left")
        for m in (None, mask):
            fast = generate_ids(model, ids, m, max_new_tokens=12, do_sample=False, output_logprobs=True)
            slow = generate_ids(model, ids, m, max_new_tokens=12, do_sample=False, output_logprobs=True, fast=False)
            assert torch.equal(fast.tokens, slow.tokens)
            assert (fast.logprobs - slow.logprobs).abs().max() < 1e-5


# ---- loading, the CLI, serving ---------------------------------------------------------------------


def test_load_for_inference_int8(trained, monkeypatch):
    _, _, directory = trained
    model, tok = load_for_inference(directory, "auto", "int8")
    assert type(model.lm_head) is Int8LMHead and tok is not None
    body_only, _ = load_for_inference(directory, "cpu", "int8", int8_head=False)
    assert type(body_only.lm_head) is LMHead and is_quantized(body_only)
    import lmforge.device as dev

    real = dev.resolve_device
    monkeypatch.setattr(
        dev, "resolve_device", lambda name="auto": torch.device("cuda") if name == "cuda" else real(name)
    )
    with pytest.raises(ConfigError, match="CPU only") as e:
        load_for_inference(directory, "cuda", "int8")
    assert "\n" not in str(e.value)


def test_int8_is_not_a_training_dtype():
    from lmforge.device import resolve_dtype

    with pytest.raises(ConfigError, match="not training"):
        resolve_dtype("int8", torch.device("cpu"))


def test_cli_generate_and_score_with_dtype_int8(trained, capsys):
    from lmforge.cli.main import main

    _, _, directory = trained

    def run(*argv):
        capsys.readouterr()
        assert main(list(argv)) == 0
        return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]

    gen = ["generate", str(directory), "--greedy", "--max-new-tokens", "20", "--json"]
    gen += [a for p in PROMPTS for a in ("--prompt", p)]
    ref, got = run(*gen), run(*gen, "--dtype", "int8")
    assert [r["text"] for r in got] == [r["text"] for r in ref] and len(got) == len(PROMPTS)
    sc = ["score", str(directory), "--text", TEXT[:40], "--text", "a lazy fox", "--per-token", "--no-progress"]
    ref, got = run(*sc), run(*sc, "--dtype", "int8")
    assert len(got) == 2
    for r, g in zip(ref, got):
        assert g["n_tokens"] == r["n_tokens"] and abs(g["bits_per_byte"] - r["bits_per_byte"]) < 0.01
        assert max(abs(a - b) for a, b in zip(g["token_logprobs"], r["token_logprobs"])) < 0.05
    capsys.readouterr()
    assert main(["train", "--preset", "tiny-gpt", "--train.dtype", "int8", "--train.max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "not training" in err


def test_serve_engine_on_an_int8_model_equals_int8_generate(trained):
    """``lmforge serve --dtype int8`` (create_app with dtype int8) serves the quantised model, and
    the engine's greedy tokens (its own decode step through the blocks) are generate's."""
    pytest.importorskip("fastapi")
    import threading

    from lmforge.infer.options import SamplingOptions
    from lmforge.infer.prompts import encode_prompt
    from lmforge.serve import Engine, Job, SamplingParams, create_app
    from lmforge.serve.engine import Delta, Failed, Finished

    _, tok, directory = trained
    model = create_app(directory, dtype="int8", max_batch=2).app.state.service.model
    assert is_quantized(model) and type(model.lm_head) is Int8LMHead
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    try:
        for p in PROMPTS[:2]:
            prompt = encode_prompt(tok, p, model)
            tokens, done = [], threading.Event()

            def sink(events, tokens=tokens, done=done):
                for e in events:
                    if isinstance(e, Delta):
                        tokens.extend(t.id for t in e.tokens or [])
                    elif isinstance(e, (Finished, Failed)):
                        done.set()

            engine.submit(Job(prompt, SamplingParams(16, SamplingOptions(temperature=0), logprobs=1), sink))
            assert done.wait(60)
            ref = generate_ids(model, torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_id=None)
            assert tokens and tokens == ref.tokens[0, : len(tokens)].tolist()
    finally:
        engine.close()
