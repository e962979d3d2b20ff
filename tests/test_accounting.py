"""Parameter, FLOP, memory, time and MFU accounting."""

import json

import pytest
import torch

from lmforge.accounting import count_flops, count_params, estimate_memory, human, training_flops_per_token
from lmforge.config import MODEL_PRESETS, ModelConfig
from lmforge.errors import ConfigError
from lmforge.hardware import (
    DEVICES,
    device_from_cuda_name,
    device_peak,
    flops_for,
    lookup_device,
    measure_cpu_peak,
    mfu,
    training_time,
)
from lmforge.models import build_model, count_parameters
from lmforge.plan.report import account

VARIANTS = [
    {},
    # the training recipe's switches
    {"qk_norm": True, "activation": "relu2", "zero_init_proj": True, "logit_softcap": 30.0},
    {"bias": False},
    {"tie_embeddings": False, "lm_head_bias": True},
    {"norm": "rmsnorm", "activation": "swiglu", "n_kv_head": 2},
    {"n_kv_head": 1, "positions": "rope"},
    {"norm_position": "post", "embedding_norm": True, "positions": "sinusoidal"},
]


def _built_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", list(MODEL_PRESETS))
def test_param_count_equals_built_model_for_every_preset(preset):
    cfg = ModelConfig.from_preset(preset)
    assert count_params(cfg).total == _built_count(cfg)


@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny", "seq2seq-tiny"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count_equals_built_model_for_variants(preset, variant):
    cfg = ModelConfig.from_preset(preset, **variant)
    assert count_params(cfg).total == _built_count(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(arch="encoder-decoder", n_encoder_layer=3, n_decoder_layer=1, n_kv_head=2),
        dict(arch="encoder", mlm_head=False, pooler=True, type_vocab_size=0),
        dict(arch="encoder", nsp_head=True, tie_embeddings=False, bias=False),
    ],
)
def test_param_count_other_shapes(overrides):
    cfg = ModelConfig.from_preset("gpt-tiny", **overrides)
    assert count_params(cfg).total == _built_count(cfg)


def test_non_embedding_matches_the_models_count():
    for preset in ("gpt-tiny", "bert-tiny", "seq2seq-tiny", "llama-tiny"):
        cfg = ModelConfig.from_preset(preset)
        model = build_model(cfg)
        pc = count_params(cfg)
        assert pc.non_embedding == count_parameters(model, non_embedding=True)
        assert pc.total == pc.embedding + pc.non_embedding == sum(pc.breakdown.values())


def test_known_counts():
    assert count_params(ModelConfig.from_preset("gpt2-small")).total == 124_439_808  # GPT-2 small
    assert count_params(ModelConfig.from_preset("bert-base")).total == 110_106_428  # BertForPreTraining


# Chinchilla Table A4: n_layer, d_model, ffw_size, n_heads, FLOP ratio (Appendix F count / 6ND)
TABLE_A4 = [
    (10, 640, 2560, 10, 1.03),
    (20, 1024, 4096, 16, 1.10),
    (24, 1280, 5120, 10, 1.08),
    (26, 1792, 7168, 14, 1.04),
    (28, 2048, 8192, 16, 1.03),
    (40, 3584, 14336, 28, 0.99),
]


@pytest.mark.parametrize("n_layer, d_model, ffw, n_head, ratio", TABLE_A4)
def test_appendix_f_count_reproduces_chinchilla_table_a4(n_layer, d_model, ffw, n_head, ratio):
    seq = 2048
    cfg = ModelConfig(
        arch="decoder",
        vocab_size=32000,
        max_positions=seq,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        d_ff=ffw,
        positions="none",
        tie_embeddings=False,
    )
    # Chinchilla's N: lmforge's non-embedding count (blocks, final norm, untied output) plus the
    # Transformer-XL relative-position parameters Gopher-family models have (d x d + 2 d per layer)
    n = count_params(cfg).non_embedding + n_layer * (d_model**2 + 2 * d_model)
    flops = count_flops(cfg, seq)
    # as in the table, embeddings and logits are left out of the detailed count
    assert round(flops.training(embeddings=False, logits=False) / (6 * n * seq), 2) == ratio


def test_detailed_count_matches_weights_for_gqa_and_swiglu():
    # each weight of a bias-free matmul costs 2 FLOPs per token in the forward pass
    cfg = ModelConfig.from_preset("llama-tiny", n_kv_head=1, n_layer=3)
    seq = 32
    f = count_flops(cfg, seq).forward_breakdown
    matmuls = f["qkv"] + f["attention_output"] + f["ffn"]
    norms = 2 * cfg.d_model * cfg.n_layer
    assert matmuls == 2 * seq * (count_params(cfg).breakdown["decoder.blocks"] - norms)
    assert f["attention_logits"] == f["attention_values"] == 2 * seq * seq * cfg.d_model * cfg.n_layer
    assert f["softmax"] == 3 * cfg.n_head * seq * seq * cfg.n_layer


def test_six_n_rules():
    cfg = ModelConfig.from_preset("gpt2-small")
    fc = count_flops(cfg, 1024)
    n = count_params(cfg).compute  # non-embedding + the tied output matrix
    assert fc.rule_6n_per_token == pytest.approx(6 * n)
    assert fc.rule_6n_attention_per_token == pytest.approx(6 * n + 12 * 12 * 1024 * 768)
    assert training_flops_per_token(cfg) == fc.rule_6n_attention_per_token
    assert training_flops_per_token(cfg, method="detailed") == fc.training_per_token
    with pytest.raises(ConfigError):
        training_flops_per_token(cfg, method="nope")


def test_mlm_head_counted_at_the_labelled_share():
    """lmforge's MLM training runs the head at the labelled positions only; MFU counts just those."""
    cfg = ModelConfig.from_preset("bert-tiny")
    d, v = cfg.d_model, cfg.vocab_size
    full, part = count_flops(cfg, 128), count_flops(cfg, 128, mlm_fraction=0.15)
    head_per_token = 6 * (v * d + 2 * d * d)  # tied decoder + transform, as in the full count
    assert full.rule_6n_per_token - part.rule_6n_per_token == pytest.approx(0.85 * head_per_token)
    assert part.forward_breakdown["logits"] == pytest.approx(0.15 * full.forward_breakdown["logits"])
    gpt = ModelConfig.from_preset("gpt-tiny")
    assert count_flops(gpt, 64, mlm_fraction=0.15).rule_6n_per_token == count_flops(gpt, 64).rule_6n_per_token
    with pytest.raises(ConfigError, match="mlm_fraction"):
        count_flops(cfg, 128, mlm_fraction=1.5)


def test_encoder_decoder_flops_include_cross_attention():
    cfg = ModelConfig.from_preset("seq2seq-tiny")
    fc = count_flops(cfg, 16, tgt_len=8)
    assert fc.tokens == 24
    assert fc.forward_breakdown["cross_attention_logits"] == 2 * 8 * 16 * cfg.d_model * cfg.decoder_layers
    assert fc.training() == 3 * fc.forward()
    assert json.dumps(fc.to_dict())


def test_memory_strategies_and_checkpointing():
    cfg = ModelConfig.from_preset("gpt2-small")
    ddp = estimate_memory(cfg, micro_batch=4, world_size=8)
    fsdp = estimate_memory(cfg, micro_batch=4, world_size=8, strategy="fsdp")
    ckpt = estimate_memory(cfg, micro_batch=4, checkpointing=True)
    n = count_params(cfg).total
    assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * n  # fp32 weights, grads, Adam m and v
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 8)
    assert fsdp.gathered > 0 and ddp.gathered == 0
    assert ckpt.activations < ddp.activations
    no_flash = estimate_memory(cfg, micro_batch=4, flash=False)
    assert no_flash.activations > ddp.activations  # the score matrices
    assert estimate_memory(cfg, micro_batch=8).activations == pytest.approx(2 * ddp.activations)
    with pytest.raises(ConfigError):
        estimate_memory(cfg, strategy="zero9")


def test_devices_time_and_cost():
    assert lookup_device("H100") is DEVICES["h100-sxm"]
    assert device_peak("h100") == 989.4e12
    names = {
        "NVIDIA H100 80GB HBM3": "h100-sxm",
        "NVIDIA H100 PCIe": "h100-pcie",
        "NVIDIA H200": "h200",
        "NVIDIA A100-SXM4-40GB": "a100-40gb",
        "NVIDIA A100-SXM4-80GB": "a100-80gb",
        "NVIDIA A100 80GB PCIe": "a100-80gb",
        "NVIDIA A10G": "a10",
        "NVIDIA L4": "l4",
        "NVIDIA L40S": "l40s",
    }
    for cuda_name, key in names.items():
        assert device_from_cuda_name(cuda_name).name == key, cuda_name
    assert device_from_cuda_name("Some Future GPU") is None
    t = training_time(1e21, "h100", n_devices=8, mfu=0.5)
    assert t.seconds == pytest.approx(1e21 / (8 * 989.4e12 * 0.5))
    assert t.dollars == pytest.approx(t.device_hours * DEVICES["h100-sxm"].price)
    assert flops_for("h100", t.seconds / 3600, 8, 0.5) == pytest.approx(1e21)
    with pytest.raises(ConfigError, match="unknown device"):
        lookup_device("tpu-v9")
    with pytest.raises(ConfigError, match="mfu"):
        training_time(1e21, "h100", mfu=0)


def test_cpu_peak_and_mfu():
    peak = measure_cpu_peak()
    assert peak > 1e8 and measure_cpu_peak() == peak  # cached
    assert device_peak("cpu") == peak
    assert mfu(1000, 6e6, 1e10) == pytest.approx(0.6)


def test_account_report_and_formatting():
    report = account(ModelConfig.from_preset("gpt-tiny"), tokens=1e9, device="a100", world_size=2)
    assert len(report.memory) == 4 and report.time.n_devices == 2
    assert "non-embedding" in report.summary()
    assert json.dumps(report.to_dict())
    assert [human(x) for x in (999.96, 1.5e9, 1e12)] == ["1K", "1.5B", "1T"]
