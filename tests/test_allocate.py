"""Compute-optimal allocation, budgets, shapes, inference-aware planning and the plan verb."""

import json

import pytest

from lmforge.accounting import count_params
from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.hardware import DEVICES
from lmforge.plan import LAWS, allocate, deepseek_batch_tokens, deepseek_learning_rate, inference_optimal, shape_for
from lmforge.plan.budget import resolve_budget


def test_sardana_inference_aware_example():
    # Sardana et al. 2024: loss 1.947 with 2e12 inference tokens -> N 2.418e10, D 2.657e12
    result = inference_optimal("sardana", target_loss=1.947, inference_tokens=2e12)
    assert result.params == pytest.approx(2.418e10, rel=0.01)
    assert result.train_tokens == pytest.approx(2.657e12, rel=0.01)
    assert LAWS["sardana"].loss(result.params, result.train_tokens) == pytest.approx(1.947)
    assert result.total_flops < result.chinchilla_total_flops  # smaller and longer-trained pays off


def test_inference_aware_without_inference_is_compute_optimal():
    law = LAWS["epoch"]
    result = inference_optimal(law, target_loss=2.3, inference_tokens=0)
    n, d = law.optimal(law.compute_for_loss(2.3))
    assert result.params == pytest.approx(n, rel=1e-6) and result.train_tokens == pytest.approx(d, rel=1e-6)


def test_allocation_for_flops():
    law = LAWS["chinchilla"]
    a = allocate(flops=1e21, law="chinchilla")
    n, d = law.optimal(1e21)
    assert (a.params, a.tokens) == pytest.approx((n, d))
    assert a.tokens_per_param == pytest.approx(d / n)
    losses = {row["scale"]: row["loss"] for row in a.frontier}
    assert losses[0.5] > losses[1.0] < losses[2.0]
    assert a.shape_params.total == count_params(a.shape).total
    assert a.shape_params.total == pytest.approx(n, rel=0.1)
    assert 64 <= a.shape.d_model / a.shape.n_layer <= 128 and a.shape.head_dim in (64, 128)
    assert a.batch_tokens == pytest.approx(deepseek_batch_tokens(1e21))
    assert a.learning_rate == pytest.approx(0.3118 * 1e21**-0.125) == deepseek_learning_rate(1e21)
    text = a.summary()
    assert "compute-optimal" in text and "frontier" in text
    assert json.loads(json.dumps(a.to_dict()))["params"] == pytest.approx(n)


def test_budgets_in_hours_and_dollars():
    peak = DEVICES["h100-sxm"].peak_flops
    a = allocate(device="h100", hours=100, gpus=8, mfu=0.5, law="epoch")
    assert a.budget.flops == pytest.approx(100 * 3600 * 8 * peak * 0.5)
    # the time is that of the shape's own FLOPs per token (6N + attention), more than the law's 6N
    assert a.time.flops == pytest.approx(a.shape_tokens * a.shape_flops_per_token["palm"])
    assert a.time.seconds == pytest.approx(100 * 3600 * a.time.flops / a.budget.flops) and a.time.seconds > 100 * 3600
    assert any("more per token than 6N" in w for w in a.warnings)
    b = resolve_budget(device="h100", dollars=3000, price=3.0, gpus=10, mfu=0.4)
    assert b.hours == pytest.approx(100) and b.flops == pytest.approx(100 * 3600 * 10 * peak * 0.4)


def test_inverse_question_smallest_compute_for_a_loss():
    law = LAWS["epoch"]
    a = allocate(target_loss=2.2, law="epoch")
    assert a.loss == pytest.approx(2.2)
    assert law.optimal_loss(a.budget.flops * 0.99) > 2.2


def test_inference_aware_allocation_with_a_budget():
    a = allocate(flops=1e21, law="epoch", inference_tokens=1e12)
    assert a.inference.target_loss == pytest.approx(a.loss)
    assert a.objective == "inference-aware" and a.params == a.inference.params  # the answer everywhere
    assert a.inference.params < a.compute_optimal["params"]  # serving favours a smaller model trained longer


def test_data_constrained_warning():
    a = allocate(flops=1e21, law="epoch", available_tokens=1e10)
    assert any("data-constrained" in w for w in a.warnings)
    assert not any("data-constrained" in w for w in allocate(flops=1e21, law="epoch", available_tokens=1e13).warnings)


def test_frontier_and_kaplan_laws():
    a = allocate(flops=1e21, law="chinchilla-table3")
    assert a.loss is None and a.params == pytest.approx(LAWS["chinchilla-table3"].optimal(1e21)[0])
    k = allocate(flops=1e21, law="kaplan")  # Kaplan counts non-embedding parameters
    assert count_params(k.shape).non_embedding == pytest.approx(k.params, rel=0.1)


def test_shapes():
    template = ModelConfig.from_preset("llama-tiny", vocab_size=32000, n_kv_head=2)  # GQA: 2 query heads per kv
    for n in (2e7, 1e9, 7e10):
        cfg = shape_for(n, template)
        assert count_params(cfg).total == pytest.approx(n, rel=0.1)
        assert cfg.d_model % cfg.head_dim == 0 and cfg.n_head == 2 * cfg.kv_heads
    assert shape_for(1e10, template, head_dim=96).head_dim == 96


def test_vocabulary_from_a_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1000)}, unk_token="w0"))
    tok.save(str(tmp_path / "tokenizer.json"))
    a = allocate(flops=1e19, law="epoch", tokenizer=tmp_path, seq_len=512)
    assert a.shape.vocab_size == 1000 and a.shape.max_positions == 512


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give --flops"),
        ({"flops": 1e21, "dollars": 10, "device": "h100"}, "not flops and dollars"),
        ({"hours": 10}, "needs a device"),
        ({"flops": -1.0}, "must be a positive"),
        ({"flops": 0.0}, "must be a positive"),
        ({"flops": 1e10}, "too small"),
        ({"flops": 1e21, "law": "nope"}, "neither a preset"),
        ({"flops": 1e21, "device": "abacus"}, "unknown device"),
        ({"flops": 1e21, "mfu": 1.5, "device": "h100"}, "mfu"),
        ({"target_loss": 1.0}, "irreducible"),
        ({"target_loss": 2.0, "law": "chinchilla-table3"}, "loss model"),
        ({"flops": 1e21, "law": "kaplan", "inference_tokens": 1e12}, "loss model"),
    ],
)
def test_bad_plans(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        allocate(**kwargs)
    assert "\n" not in str(err.value)


def test_plan_verb(tmp_path, capsys):
    assert main(["plan", "--flops", "1e20", "--law", "epoch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_param"] > 15
    png = tmp_path / "plan.png"
    assert main(["plan", "--device", "a100", "--hours", "1000", "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000 and "compute-optimal" in capsys.readouterr().out
    assert main(["plan", "--model", "gpt-tiny", "--tokens", "1e9", "--device", "l4"]) == 0
    assert "memory per device" in capsys.readouterr().out
    assert main(["plan", "--flops", "1e3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: budget") and "\n" not in err
