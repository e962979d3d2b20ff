"""Small shared helpers: eval_mode, and the special-token lookup."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import build_model
from lmforge.nn import eval_mode
from lmforge.tokenizer import special_id


def test_eval_mode_restores_the_training_mode_also_on_error():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5))
    for training in (True, False):
        model.train(training)
        with eval_mode(model) as m:
            assert m is model and not model.training and not model[0].training
        assert model.training == training and model[0].training == training
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert model.training


def test_special_id_prefers_the_tokenizer_then_the_model_config():
    class Tok:
        eos_id, pad_id, mask_id = 3, None, "not an id"

    model = build_model(ModelConfig.from_preset("gpt-tiny", eos_id=1, pad_id=0, bos_id=2))
    assert special_id(Tok(), "eos", model) == 3 and special_id(Tok(), "eos_id") == 3
    assert special_id(Tok(), "pad", model) == 0 and special_id(Tok(), "pad", model.config) == 0
    assert special_id(Tok(), "pad") is None and special_id(Tok(), "mask") is None
    assert special_id(None, "bos", model) == 2 and special_id(None, "cls", model) is None
