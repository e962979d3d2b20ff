"""Every paradigm learns: each objective's model overfits one fixed batch from the data layer."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data import make_batches, prepare
from lmforge.models import build_model
from lmforge.train import TrainConfig, Trainer
from lmforge.train.run import fit_model_to_tokenizer

TEXT = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name.
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    for i in range(4):  # several documents: NSP draws its random B from another one
        (root / f"doc{i}.txt").write_text(TEXT * (i + 2) + f"Scene {i}.\n", encoding="utf-8")
    return prepare(str(root), root / "data", "char", sentinels=20, progress=False)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


class Fixed:
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


CASES = {
    "causal": "gpt-tiny",
    "mlm": "bert-tiny",
    "mlm+nsp": "bert-tiny",
    "span": "seq2seq-tiny",
    "plm": "xlnet-tiny",
}


@pytest.mark.parametrize("objective", list(CASES))
def test_each_paradigm_overfits_a_fixed_batch(dataset, objective):
    tok = dataset.tokenizer
    model_cfg = fit_model_to_tokenizer(
        ModelConfig.from_preset(CASES[objective], max_positions=32, nsp_head=objective == "mlm+nsp")
        if objective.startswith("mlm")
        else ModelConfig.from_preset(CASES[objective], max_positions=32),
        tok,
    )
    batch = make_batches(objective, dataset, 8, 32, seed=0).next_batch()
    torch.manual_seed(0)
    model = build_model(model_cfg)
    cfg = TrainConfig(
        max_steps=100,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        min_lr_ratio=0.1,
        weight_decay=0.0,
        eval_every=0,
        checkpoint_every=0,
        log_every=10,
        threads=1,
        peak_flops=1e11,
        progress=False,
        sample_tokens=0,
    )
    trainer = Trainer(model, cfg, Fixed(batch), eval_batches=lambda n: [batch], log=lambda m: None)
    start = trainer.evaluate()["loss"]
    result = trainer.fit()
    assert result.metrics["loss"] < 0.1 * start, (objective, start, result.metrics)
    if objective.startswith("mlm"):
        assert result.metrics["mlm_accuracy"] > 0.9
    if objective == "mlm+nsp":
        assert result.metrics["nsp_accuracy"] == 1.0


def test_held_out_corruption_is_the_reference_recipe_whatever_the_training_settings():
    from lmforge.train.config import RunConfig
    from lmforge.train.run import eval_objective_options, objective_options

    bert = RunConfig.from_preset("shakespeare-bert")
    assert objective_options(bert)["mlm_probability"] == 0.3
    assert eval_objective_options(bert) == {"mlm_probability": 0.15}
    t5 = RunConfig.from_preset("tiny-t5")
    t5.data.noise_density, t5.data.mean_span_length = 0.3, 1.0
    assert eval_objective_options(t5) == {"noise_density": 0.15, "mean_span_length": 3.0}
    gpt = RunConfig.from_preset("tiny-gpt")
    assert eval_objective_options(gpt) == objective_options(gpt) == {}
    masked = RunConfig.from_dict({**gpt.to_dict(), "data": {**gpt.data.to_dict(), "doc_mask": True}})
    assert eval_objective_options(masked) == objective_options(masked) == {"doc_mask": True}  # evaluation too


def test_doc_mask_reaches_the_model_through_the_engine(dataset):
    """The sampler's document_ids are a forward argument: the trainer's loss is the masked one."""
    from lmforge.errors import ConfigError
    from lmforge.train.config import DataConfig

    model_cfg = fit_model_to_tokenizer(ModelConfig.from_preset("gpt-tiny", max_positions=64), dataset.tokenizer)
    batch = make_batches("causal", dataset, 16, 64, order="sequential", doc_mask=True).next_batch()
    assert (batch["document_ids"][:, -1] > 0).any()  # the batch crosses a boundary
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    cfg = TrainConfig(max_steps=1, batch_size=16, threads=1, peak_flops=1e11, progress=False, sample_tokens=0)
    trainer = Trainer(model, cfg, Fixed(batch), eval_batches=lambda n: [batch], log=lambda m: None)
    with torch.no_grad():
        masked = model(batch["input_ids"], labels=batch["labels"], document_ids=batch["document_ids"]).loss
        unmasked = model(batch["input_ids"], labels=batch["labels"]).loss
    assert abs(masked.item() - unmasked.item()) > 1e-6
    assert trainer.evaluate()["loss"] == pytest.approx(masked.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="data.doc_mask"):
        DataConfig(objective="mlm", doc_mask=True)


def test_nsp_head_learns_a_separable_pair_task():
    """The NSP path (pooler, head, loss) can learn when the signal is there: B from the same or a
    disjoint vocabulary as A. Shakespeare's NSP stays at chance for want of signal, not of code."""
    from lmforge.train.optim import param_groups

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "bert-tiny", vocab_size=128, max_positions=32, norm_position="pre", positions="rope", nsp_head=True
    )
    model = build_model(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)

    def pairs(n):
        a = torch.randint(10, 60, (n, 15))
        label = torch.randint(0, 2, (n,))
        b = torch.where(label[:, None] == 1, torch.randint(60, 110, (n, 14)), torch.randint(10, 60, (n, 14)))
        sep = torch.full((n, 1), 3)
        ids = torch.cat([torch.full((n, 1), 2), a, sep, b, sep], 1)
        types = torch.cat([torch.zeros(n, 17, dtype=torch.long), torch.ones(n, 15, dtype=torch.long)], 1)
        return dict(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids), next_sentence_label=label)

    for _ in range(60):
        loss = model(**pairs(64)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = pairs(256)
    with torch.no_grad():
        accuracy = (model(**held_out).nsp_logits.argmax(-1) == held_out["next_sentence_label"]).float().mean()
    assert accuracy > 0.95


def test_the_objective_registry_is_what_configs_and_runs_read():
    """Every registered objective names real config fields, a real architecture and options its
    sampler takes; a run's validation and its sampler options come from the entry."""
    import inspect
    from dataclasses import fields

    from lmforge.config import ARCHITECTURES
    from lmforge.data import OBJECTIVES
    from lmforge.errors import ConfigError
    from lmforge.train.config import DataConfig, RunConfig
    from lmforge.train.run import objective_options

    data_fields = {f.name for f in fields(DataConfig)}
    for name, spec in OBJECTIVES.items():
        assert spec.arch in ARCHITECTURES
        assert set(spec.config_options.values()) <= data_fields, name
        taken = set(inspect.signature(spec.sampler.__init__).parameters)
        assert set(spec.sampler_options) <= taken, name
        assert set(spec.eval_options) <= set(spec.sampler_options), name
    bert = RunConfig.from_preset("tiny-bert")
    assert objective_options(bert) == {"mlm_probability": bert.data.mlm_probability}
    with pytest.raises(ConfigError, match="trains an encoder-decoder model"):
        bert.replace(data=bert.data.replace(objective="span"))
