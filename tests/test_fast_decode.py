"""The contract of the fast decode step (lmforge.models.fast_decode): it computes what the decoder's
own forward (lmforge.nn) computes, token for token, so an edit of nn.py that this test does not
follow fails here; and its CPU matmuls equal F.linear up to float rounding."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.infer import generate_ids
from lmforge.infer.prompts import pad_batch
from lmforge.models import build_model
from lmforge.models.fast_decode import FastDecodeStep


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(1)
    return build_model(ModelConfig.from_preset("llama-tiny")).eval()


def _left_padded(prompts, pad=0):
    return pad_batch([p.tolist() for p in prompts], pad, "left")


def test_fast_decode_step_equals_model_forward(gpt, llama):
    """The fast decode step (parameters bound once) computes what model.forward computes, and a
    model with replaced layers or hooks falls back to model.forward."""
    for model in (gpt, llama):
        assert FastDecodeStep.supported(model)
        ids, mask = _left_padded([torch.randint(0, 256, (3,)), torch.randint(0, 256, (6,))])
        for m in (None, mask):
            fast = generate_ids(model, ids, m, max_new_tokens=12, do_sample=False, output_logprobs=True)
            slow = generate_ids(model, ids, m, max_new_tokens=12, do_sample=False, output_logprobs=True, fast=False)
            assert torch.equal(fast.tokens, slow.tokens)
            assert (fast.logprobs - slow.logprobs).abs().max() < 1e-5
    handle = gpt.transformer.blocks[0].mlp.register_forward_hook(lambda mod, inp, out: out)
    try:
        assert not FastDecodeStep.supported(gpt)
    finally:
        handle.remove()
    torch.manual_seed(5)
    post = build_model(
        ModelConfig.from_preset(
            "gpt-tiny", norm_position="post", positions="sinusoidal", activation="geglu", embedding_norm=True
        )
    ).eval()
    assert FastDecodeStep.supported(post)
    ids = torch.randint(0, 256, (2, 5))
    assert torch.equal(
        generate_ids(post, ids, max_new_tokens=10, do_sample=False).tokens,
        generate_ids(post, ids, max_new_tokens=10, do_sample=False, use_cache=False).tokens,
    )


RECIPE = dict(activation="relu2", zero_init_proj=True, qk_norm=True, logit_softcap=2.0)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_fast_decode_step_with_the_recipe_switches(preset):
    """The fast decode step computes the recipe's switches (docs/training.md, "Recipe switches")
    as model.forward does."""
    torch.manual_seed(6)
    model = build_model(ModelConfig.from_preset(preset, **RECIPE)).eval()
    with torch.no_grad():  # weights in the zero-initialised projections, so that attention matters
        for name, mod in model.named_modules():
            if name.endswith(("attn.proj", "mlp.proj")):
                mod.weight.normal_(0.0, 0.05)
    assert FastDecodeStep.supported(model)
    ids, mask = _left_padded([torch.randint(0, 256, (3,)), torch.randint(0, 256, (6,))])
    for m in (None, mask):
        fast = generate_ids(model, ids, m, max_new_tokens=12, do_sample=False, output_logprobs=True)
        slow = generate_ids(model, ids, m, max_new_tokens=12, do_sample=False, output_logprobs=True, fast=False)
        assert torch.equal(fast.tokens, slow.tokens)
        assert (fast.logprobs - slow.logprobs).abs().max() < 1e-5


def test_cpu_decode_matmuls_equal_f_linear(monkeypatch):
    """The two CPU decode-step matmuls compute F.linear up to float rounding, at every row count
    they serve, with and without bias, on a strided input; oneDNN steps aside where it cannot."""
    import lmforge.models.fast_decode as fd

    torch.manual_seed(0)
    weights = [torch.randn(48, 16), torch.randn(16, 48)]
    bias = torch.randn(48)
    for rows in (1, 2, 8, fd.FEW_ROWS):
        onednn = fd.onednn_linear(weights, rows)
        for w, b in ((weights[0], bias), (weights[1], None)):
            x = torch.randn(1, rows, w.shape[1]).transpose(0, 1)  # (rows, 1, in), not contiguous
            expected = torch.nn.functional.linear(x, w, b)
            for linear in filter(None, (fd.few_rows_linear, onednn)):
                assert torch.allclose(linear(x, w, b), expected, rtol=1e-5, atol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert fd.onednn_linear(weights, 8) is not None
    assert fd.onednn_linear([w.double() for w in weights], 8) is None
    monkeypatch.setattr(fd, "PACK_LIMIT", 100)
    assert fd.onednn_linear(weights, 8) is None
