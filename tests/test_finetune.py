"""Fine-tuning pieces: LoRA (merge, unmerge, adapters, plain reload), parameter selections with
exact counts, the classifier head, task files (bad rows by line), labels, metrics."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError, DataError
from lmforge.finetune import heads, lora, metrics, params, tasks
from lmforge.models import build_model, load_model, save_model


class CharTok:
    """Bytes + 4 specials: enough tokenizer for the task encoders."""

    pad_id, cls_id, sep_id, eos_id, bos_id = 0, 1, 2, 3, None
    vocab_size = 260

    def encode(self, text):
        return [b + 4 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 4 for i in ids if i >= 4).decode("utf-8", "replace")


TOK = CharTok()
CFGS = {
    "decoder": ModelConfig.from_preset("gpt-tiny", vocab_size=260),
    "llama": ModelConfig.from_preset("llama-tiny", vocab_size=260),
    "encoder": ModelConfig.from_preset("bert-tiny", vocab_size=260),
    "seq2seq": ModelConfig.from_preset("seq2seq-tiny", vocab_size=260),
}


def _model(kind, seed=0):
    torch.manual_seed(seed)
    return build_model(CFGS[kind]).eval()


def _forward(model, x):
    with torch.no_grad():
        if model.config.arch == "encoder-decoder":
            return model(input_ids=x, decoder_input_ids=x[:, :5]).logits
        out = model(x)
        return out.logits


def _perturb_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


X = torch.randint(4, 260, (2, 12), generator=torch.Generator().manual_seed(0))
ALL_LINEAR = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]


# ---- LoRA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CFGS))
def test_lora_starts_as_the_base_model_and_merge_keeps_outputs(kind):
    model = _model(kind)
    before = _forward(model, X)
    wrapped = lora.apply_lora(model, rank=4, alpha=8, targets=ALL_LINEAR)
    assert wrapped and all(isinstance(model.get_submodule(n), lora.LoRALinear) for n in wrapped)
    assert torch.equal(_forward(model, X), before)  # B = 0: the pretrained function exactly
    _perturb_adapters(model)
    adapted = _forward(model, X)
    assert not torch.allclose(adapted, before)
    lora.merge(model)
    assert (_forward(model, X) - adapted).abs().max() <= 1e-5
    lora.unmerge(model)
    assert (_forward(model, X) - adapted).abs().max() <= 1e-5


def test_merged_model_reloads_with_plain_load_model(tmp_path):
    model = _model("decoder")
    lora.apply_lora(model, rank=4, targets=ALL_LINEAR)
    _perturb_adapters(model)
    adapted = _forward(model, X)
    plain = lora.merge_and_unload(model)
    assert not lora.lora_modules(plain)
    save_model(plain, tmp_path / "merged")
    stored = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not any("lora" in k or ".base." in k for k in stored)  # nothing a plain loader would not know
    again = load_model(tmp_path / "merged")
    assert type(again) is type(_model("decoder"))
    assert (_forward(again, X) - adapted).abs().max() <= 1e-5


def test_adapters_alone_save_and_load(tmp_path):
    model = _model("encoder")
    clf = heads.SequenceClassifier(model, ["a", "b", "c"]).eval()
    lora.apply_lora(clf, rank=2)
    params.select_parameters(clf, "lora")
    _perturb_adapters(clf)
    with torch.no_grad():
        clf.classifier.weight.normal_()
    want = clf(X).logits.detach()
    path = lora.save_adapters(clf, tmp_path / "adapters.safetensors")
    saved = load_file(str(path))
    assert set(saved) == {n for n, p in clf.named_parameters() if p.requires_grad}  # LoRA matrices + head
    fresh = heads.SequenceClassifier(_model("encoder"), ["a", "b", "c"]).eval()
    lora.load_adapters(fresh, path)  # wraps the same layers, then fills them
    assert (fresh(X).logits - want).abs().max() <= 1e-6


def test_lora_refuses_bad_targets_and_merged_saves(tmp_path):
    with pytest.raises(ConfigError, match="matched no linear layer"):
        lora.apply_lora(_model("decoder"), targets=["attn.nope"])
    m = _model("decoder")
    lora.apply_lora(m, rank=2)
    lora.merge(m)
    with pytest.raises(ConfigError, match="unmerge"):
        lora.save_adapters(m, tmp_path / "a.safetensors")


def test_lora_refuses_a_soft_capped_head():
    """An adapter adds its term after the layer's output: after the cap, a different model."""
    m = build_model(ModelConfig.from_preset("gpt-tiny", tie_embeddings=False, logit_softcap=30.0))
    with pytest.raises(ConfigError, match="lm_head soft-caps its logits"):
        lora.apply_lora(m, rank=2, targets=["lm_head"])
    assert lora.apply_lora(m, rank=2)  # the blocks' layers adapt as usual


# ---- which parameters learn ---------------------------------------------------------------------


def _numel(model, pred):
    return sum(p.numel() for n, p in model.named_parameters() if pred(n))


def test_trainable_counts_are_exact(capsys):
    clf = heads.SequenceClassifier(_model("encoder"), ["a", "b"])
    total = sum(p.numel() for p in clf.parameters())
    head = _numel(clf, lambda n: n.startswith("classifier."))
    cases = {
        "all": total,
        "no-embeddings": total
        - _numel(clf, lambda n: n.endswith(("tok_emb.weight", "pos_emb.weight", "type_emb.weight"))),
        "bitfit": _numel(clf, lambda n: n.endswith(".bias") and not n.startswith("classifier.")) + head,
        "top-k:1": _numel(clf, lambda n: ".blocks.1." in n or n.startswith(("classifier.", "backbone.pooler."))),
    }
    for spec, want in cases.items():
        got = params.select_parameters(clf, spec, verbose=True)
        assert got.trainable == want == sum(p.numel() for p in clf.parameters() if p.requires_grad), spec
        assert got.total == total
        assert f"{want:,} of {total:,}" in capsys.readouterr().out
    cfg = clf.config
    lora.apply_lora(clf, rank=4, targets=["attn.qkv", "mlp.fc"])
    got = params.select_parameters(clf, "lora", verbose=True)
    per_layer = 4 * (cfg.d_model + 3 * cfg.d_model) + 4 * (cfg.d_model + cfg.ffn_dim)
    assert got.trainable == cfg.n_layer * per_layer + head
    assert got.total == total + cfg.n_layer * per_layer
    assert f"({100 * got.trainable / got.total:.2f}%)" in capsys.readouterr().out


def test_tied_head_counts_once_and_untied_unused_head_stays_frozen():
    clf = heads.SequenceClassifier(_model("decoder"), ["a", "b"])  # tied: lm_head is the embedding
    assert params.select_parameters(clf, "all").trainable == sum(p.numel() for p in clf.parameters())
    llama = heads.SequenceClassifier(_model("llama"), ["a", "b"])  # untied LM head, unused by the task
    sel = params.select_parameters(llama, "all")
    assert not llama.backbone.lm_head.weight.requires_grad
    assert sel.trainable == sel.total - llama.backbone.lm_head.weight.numel()


def test_parameter_selection_errors():
    m = _model("decoder")
    with pytest.raises(ConfigError, match="apply_lora"):
        params.select_parameters(m, "lora")
    with pytest.raises(ConfigError, match="out of range"):
        params.select_parameters(m, "top-k:5")
    with pytest.raises(ConfigError, match="unknown selection"):
        params.select_parameters(m, "some")


# ---- the classifier head ------------------------------------------------------------------------


def test_decoder_classifier_reads_the_last_real_token():
    clf = heads.SequenceClassifier(_model("decoder"), ["a", "b"]).eval()
    x = X[:1, :7]
    alone = clf(x).logits
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    assert torch.allclose(clf(padded, mask).logits, alone, atol=1e-5)


def test_encoder_classifier_uses_the_pooler_when_present():
    enc = _model("encoder")
    clf = heads.SequenceClassifier(enc, ["a", "b"])
    assert clf.pooling == "pooler" and enc.mlm is None and enc.nsp is None  # unused heads dropped
    no_pooler = heads.SequenceClassifier(build_model(CFGS["encoder"].replace(nsp_head=False, pooler=False)), ["a", "b"])
    assert no_pooler.pooling == "cls"
    with pytest.raises(ConfigError, match="needs an encoder"):
        heads.SequenceClassifier(_model("decoder"), ["a", "b"], pooling="cls")
    with pytest.raises(ConfigError, match="needs a decoder"):
        heads.SequenceClassifier(_model("seq2seq"), ["a", "b"], pooling="last")


@pytest.mark.parametrize("kind", ["encoder", "decoder", "seq2seq"])
def test_mean_pooling_is_the_mean_of_the_real_tokens_states(kind):
    clf = heads.SequenceClassifier(_model(kind), ["a", "b"], pooling="mean").eval()
    x = X[:1, :7]
    if kind == "encoder":
        states = clf.backbone.encoder(x).last_hidden_state
    elif kind == "seq2seq":
        states = clf.backbone.encode(x).last_hidden_state
    else:
        states = clf.backbone.transformer(x).last_hidden_state
    want = states[0].mean(0)  # by hand: the average over the seven positions
    assert torch.allclose(clf.features(x)[0], want, atol=1e-5)
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    assert torch.allclose(clf.features(padded, mask)[0], want, atol=1e-5)  # padding neither read nor counted


def test_encoder_decoder_classifies_with_its_encoder_and_leaves_the_decoder():
    clf = heads.SequenceClassifier(_model("seq2seq"), ["a", "b"])
    assert clf.pooling == "mean"
    unused = clf.unused_parameters()
    assert unused and all(n.startswith(("backbone.decoder.", "backbone.lm_head.")) for n in unused)
    assert not any(n.startswith("backbone.encoder.") or n == "backbone.shared.weight" for n in unused)
    trainable = params.select_parameters(clf, "all")
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert names.isdisjoint(unused) and "classifier.weight" in names, trainable


@pytest.mark.parametrize("kind", ["encoder", "decoder", "seq2seq"])
def test_task_model_directory_round_trip(tmp_path, kind):
    clf = heads.SequenceClassifier(_model(kind), ["no", "yes"], pooling="mean" if kind == "encoder" else "auto")
    clf.eval()
    lora.apply_lora(clf, rank=2)
    _perturb_adapters(clf)
    want = clf(X).logits.detach()
    heads.save_task_model(clf, tmp_path / "m")
    assert lora.lora_modules(clf)  # saving merged a copy, not the model
    again, extra = heads.load_task_model(tmp_path / "m")
    assert extra["task"]["labels"] == ["no", "yes"]
    assert (again(X).logits - want).abs().max() <= 1e-5
    backbone = load_model(tmp_path / "m")  # the plain loader reads the fine-tuned backbone
    assert backbone.config.arch == CFGS[kind].arch


# ---- task files ---------------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_rows_are_reported_by_line_in_one_line(tmp_path):
    f = _write(
        tmp_path / "train.jsonl",
        "\n".join(
            [
                json.dumps({"text": "good one", "label": "a"}),
                json.dumps({"text": "no label"}),
                "",
                json.dumps({"text": "   ", "label": "b"}),
                "{not json",
                json.dumps({"text": "fine", "label": 2}),
            ]
        )
        + "\n",
    )
    with pytest.raises(DataError) as e:
        tasks.check_rows(f, "classify")
    msg = str(e.value)
    assert "\n" not in msg and "train.jsonl" in msg
    assert "line 2: missing field 'label'" in msg and "line 4: empty 'text'" in msg and "line 5: invalid JSON" in msg
    assert "line 1" not in msg and "line 6" not in msg


def test_csv_lines_count_quoted_newlines_and_unknown_labels(tmp_path):
    train = _write(tmp_path / "t.csv", 'text,label\n"two\nlines",x\nplain,y\n')
    rows = tasks.check_rows(train, "classify")
    assert [r["label"] for r in rows] == ["x", "y"]
    val = _write(tmp_path / "v.csv", 'text,label\nok,x\n"a\nb",z\nempty,\n')
    with pytest.raises(DataError, match=r"line 3: unknown label 'z'.*line 5: empty 'label'"):
        tasks.check_rows(val, "classify", labels=["x", "y"])


def test_classification_labels_are_strings_in_sorted_order(tmp_path):
    f = _write(
        tmp_path / "t.jsonl",
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [("a", 10), ("b", 9), ("c", "x")]),
    )
    data = tasks.load_task(f, "classify", TOK, "encoder", 16)
    assert data.label_names == ["10", "9", "x"] and data.class_ids == [0, 1, 2]
    e = data.examples[0]
    assert e.input_ids == [TOK.cls_id, ord("a") + 4, TOK.sep_id] and e.token_type_ids == [0, 0, 0]


def test_pairs_and_truncation():
    ids, types = tasks.encode_classification(TOK, "encoder", "abcdefgh", "xy", 8)
    assert len(ids) == 8 and ids[0] == TOK.cls_id and ids.count(TOK.sep_id) == 2
    assert types == [0] * 5 + [1] * 3  # [CLS] a a a [SEP] | x y [SEP]
    ids, _ = tasks.encode_classification(TOK, "decoder", "abcdefgh", None, 5)
    assert ids[-1] == TOK.eos_id and len(ids) == 5


def test_completion_loss_only_on_the_completion():
    e = tasks.encode_completion(TOK, "Q: hi", " ok", 32)
    full = TOK.encode("Q: hi") + TOK.encode(" ok") + [TOK.eos_id]
    assert e.input_ids == full[:-1]
    assert e.labels == [-100] * 4 + TOK.encode(" ok") + [TOK.eos_id]  # position t predicts token t+1
    batch = tasks.collate([e, tasks.encode_completion(TOK, "Q", "a", 32)], TOK.pad_id)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, 2:] == -100).all() and (batch["attention_mask"][1, 2:] == 0).all()
    long = tasks.encode_completion(TOK, "x" * 50, "yz", 8)  # the prompt is cut from the left
    assert len(long.input_ids) == 8 and long.labels[-3:] == TOK.encode("yz") + [TOK.eos_id]


def test_seq2seq_examples():
    e = tasks.encode_seq2seq(TOK, "abc", "de", 16)
    assert e.input_ids == TOK.encode("abc") + [TOK.eos_id] and e.labels == TOK.encode("de") + [TOK.eos_id]
    with pytest.raises(ConfigError, match="encoder-decoder"):
        tasks.encode_rows([{"source": "a", "target": "b"}], "seq2seq", TOK, "decoder", 8)
    # a source too long for the context is cut as training cuts it, and generation gets the same text
    data = tasks.encode_rows([{"source": "abcdefghij", "target": "b"}], "seq2seq", TOK, "encoder-decoder", 6)
    assert data.sources == ["abcde"] and data.examples[0].input_ids == TOK.encode("abcde") + [TOK.eos_id]
    assert tasks.fit_source(TOK, "abc", 6) == "abc"


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40), st.integers(1, 12))
def test_fit_source_always_fits_and_is_a_prefix(source, max_len):
    cut = tasks.fit_source(TOK, source, max_len)
    assert len(tasks._plain_ids(TOK, cut)) <= max_len - 1
    assert cut == source or source.strip().startswith(cut.rstrip("\ufffd"))  # a cut inside a character ends in U+FFFD


def test_batches_cover_each_epoch_and_resume():
    data = tasks.TaskDataset("classify", [tasks.Example([i + 4], i % 2) for i in range(10)], ["a", "b"])
    src = tasks.ShuffledBatches(data, 4, seed=1)
    seen = torch.cat([src.next_batch()["input_ids"][:, 0] for _ in range(5)]).tolist()
    assert sorted(seen[:10]) == list(range(4, 14))
    state = src.state_dict()
    nxt = src.next_batch()["input_ids"]
    again = tasks.ShuffledBatches(data, 4, seed=1)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["input_ids"], nxt)


# ---- metrics ------------------------------------------------------------------------------------


def test_macro_f1_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        gold, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
        assert metrics.macro_f1(pred, gold) == pytest.approx(sk.f1_score(gold, pred, average="macro"))
        assert metrics.accuracy(pred, gold) == pytest.approx(sk.accuracy_score(gold, pred))


def test_engine_style_macro_f1_equals_direct():
    gold = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 0, 2, 2, 0]), 3).float()
    fn = metrics.classification_batch_metrics(3)
    sums = {}
    for s in (slice(0, 3), slice(3, 8)):  # two batches, summed as the engine does
        out = heads.ClassifierOutput(logits[s], torch.tensor(0.5))
        for k, (num, den) in fn({"labels": gold[s]}, out).items():
            a = sums.setdefault(k, [0.0, 0.0])
            a[0] += num
            a[1] += den
    m = metrics.finish_classification_metrics({k: a / b for k, (a, b) in sums.items()}, 3)
    assert m["macro_f1"] == pytest.approx(metrics.macro_f1(logits.argmax(-1), gold, 3))
    assert not any(k.startswith("_") for k in m)


def test_generation_metrics():
    assert metrics.exact_match(["a  b", "c"], ["a b", "d"]) == 0.5
    pytest.importorskip("sacrebleu")
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert metrics.bleu(["a b c d"], ["w x y z"]) < 1.0


def test_a_missing_column_is_named(tmp_path):
    f = _write(tmp_path / "t.csv", "sentence,label\nhello,a\n")
    with pytest.raises(DataError, match="no row has the field 'text' \\(found: label, sentence\\)"):
        tasks.check_rows(f, "classify")
