"""Attention maps: probabilities (rows sum to 1, causal zeros), head selection, the three families,
the PNG + .npy files and the attention CLI verb (checked through the data, never the pixels)."""

import json

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.infer import attention_map, save_attention
from lmforge.models import build_model, save_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_decoder_map_rows_sum_to_one_and_causal(gpt, tmp_path):
    ids = torch.randint(0, 256, (12,))
    amap = attention_map(gpt, None, ids, layer=1)
    assert amap.matrix.shape == (4, 12, 12) and amap.head is None and amap.layer == 1
    assert np.allclose(amap.matrix.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(amap.matrix, k=1) == 0)  # no attention to the future
    one = attention_map(gpt, None, ids, layer=-1, head=2)
    assert one.layer == 1 and one.head == 2
    assert np.allclose(one.matrix, amap.matrix[2])
    png, npy, meta = save_attention(one, tmp_path / "att.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    m = np.load(npy)
    assert m.shape == (12, 12) and np.allclose(m.sum(-1), 1.0, atol=1e-5)
    info = json.loads(meta.read_text(encoding="utf-8"))
    assert info["layer"] == 1 and info["head"] == 2 and len(info["query_tokens"]) == 12
    grid, _, _ = save_attention(amap, tmp_path / "grid.png")  # all heads as a grid
    assert grid.read_bytes()[:8] == PNG_MAGIC


def test_maps_equal_the_model_attentions(gpt):
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        ref = gpt(ids, output_attentions=True).attentions[0][0]
    assert np.allclose(attention_map(gpt, None, ids[0], layer=0).matrix, ref.numpy(), atol=1e-6)


def test_encoder_and_encoder_decoder_maps():
    torch.manual_seed(1)
    enc = build_model(ModelConfig.from_preset("bert-tiny")).eval()
    a = attention_map(enc, None, [1, 5, 6, 7, 2], layer=0, head=0)
    assert a.matrix.shape == (5, 5) and np.allclose(a.matrix.sum(-1), 1, atol=1e-5)
    assert (a.matrix[0, 1:] > 0).all()  # bidirectional
    s2s = build_model(ModelConfig.from_preset("seq2seq-tiny", bos_id=1)).eval()
    cross = attention_map(s2s, None, [5, 6, 7, 8], target=[9, 10], layer=-1)
    assert cross.kind == "cross" and cross.matrix.shape == (4, 3, 4)  # start + 2 target tokens over 4 source
    assert np.allclose(cross.matrix.sum(-1), 1, atol=1e-5)
    dec = attention_map(s2s, None, [5, 6, 7, 8], target=[9, 10], kind="decoder")
    assert dec.matrix.shape == (4, 3, 3) and np.all(np.triu(dec.matrix, k=1) == 0)
    enc_self = attention_map(s2s, None, [5, 6, 7, 8])
    assert enc_self.kind == "encoder" and enc_self.matrix.shape == (4, 4, 4)


def test_bad_layer_or_head(gpt):
    with pytest.raises(LMForgeError, match="layer"):
        attention_map(gpt, None, [1, 2, 3], layer=5)
    with pytest.raises(LMForgeError, match="head"):
        attention_map(gpt, None, [1, 2, 3], layer=0, head=4)


def test_cli_attention(tmp_path, capsys):
    from lmforge.cli.main import main
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer("char", ["to be or not to be"])
    torch.manual_seed(2)
    model = build_model(ModelConfig.from_preset("gpt-tiny", vocab_size=64, bos_id=tok.bos_id)).eval()
    directory = save_model(model, tmp_path / "m", tokenizer=tok)
    out = tmp_path / "maps" / "att.png"
    assert main(["attention", str(directory), "--text", "to be", "--layer", "0", "--head", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    m = np.load(out.with_suffix(".npy"))
    assert m.shape == (6, 6)  # BOS + 5 characters
    assert np.allclose(m.sum(-1), 1.0, atol=1e-5)
    tokens = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["key_tokens"]
    assert tokens[1:] == list("to be")
    assert "wrote" in capsys.readouterr().out
    assert main(["attention", str(directory), "--text", "to be", "--layer", "9", "--out", str(out)]) == 2
