import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import MODEL_PRESETS, ModelConfig
from lmforge.errors import ConfigError, LMForgeError


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_presets_round_trip_json(name, tmp_path):
    cfg = ModelConfig.from_preset(name)
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert ModelConfig.from_json(path) == cfg


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("arch: decoder\nn_layer: 3\nd_model: 96\nn_head: 3\n")
    cfg = ModelConfig.from_file(p)
    assert (cfg.n_layer, cfg.head_dim) == (3, 32)
    cfg2 = cfg.override({"n_layer": "5", "positions": "rope", "bias": "false"})
    assert (cfg2.n_layer, cfg2.positions, cfg2.bias) == (5, "rope", False)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(d_model=100, n_head=3), "d_model"),
        (dict(n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(activation="gelux"), "activation"),
        (dict(norm="batchnorm"), "norm"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(positions="alibi"), "positions"),
        (dict(arch="rnn"), "arch"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=-5), "vocab_size"),
        (dict(d_ff=0), "d_ff"),
        (dict(dropout=1.5), "dropout"),
        (dict(pad_id=10**6), "pad_id"),
        (dict(nsp_head=True), "nsp_head"),
        (dict(positions="rope", d_model=96, n_head=32), "positions"),
        (dict(n_layer="many"), "n_layer"),
        (dict(widht=3), "widht"),
    ],
)
def test_invalid_configs_name_the_field(changes, field):
    d = ModelConfig.from_preset("gpt-tiny").to_dict()
    d.update(changes)
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(d)
    assert str(e.value).startswith(field), str(e.value)
    assert isinstance(e.value, LMForgeError) and "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        ModelConfig.from_preset("gpt-99")


@settings(max_examples=40, deadline=None)
@given(n_head=st.integers(1, 8), mult=st.integers(1, 8), kv_div=st.integers(1, 8), gated=st.booleans())
def test_valid_shapes_always_accepted(n_head, mult, kv_div, gated):
    kv = kv_div if n_head % kv_div == 0 else 1
    cfg = ModelConfig(d_model=n_head * mult * 2, n_head=n_head, n_kv_head=kv, activation="swiglu" if gated else "gelu")
    assert cfg.head_dim * cfg.n_head == cfg.d_model and cfg.n_head % cfg.kv_heads == 0
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_device_and_dtype_names(monkeypatch):
    """Device names resolve as documented; with a GPU (faked here) a plain "cuda" under torchrun is
    the local rank's GPU, as "auto" is."""
    import torch

    from lmforge.device import resolve_device, resolve_dtype

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    for bad in ("tpu", "cuda:x"):
        with pytest.raises(ConfigError, match="device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="fp16 autocast is not supported on the CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
