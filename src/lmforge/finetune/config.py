"""A fine-tuning run's configuration: :class:`FinetuneConfig` (the task and its files, the
backbone, what learns, the recipe) and the named presets of ``lmforge finetune --preset``."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import ConfigBase
from lmforge.errors import ConfigError
from lmforge.finetune.lora import LoRAConfig
from lmforge.finetune.params import parse_mode
from lmforge.finetune.tasks import TASKS
from lmforge.train.config import TrainConfig

GENRE_SOURCE = "shakespeare-genre"  # as --train: the bundled plays labelled by genre
RESTORE_SOURCE = "shakespeare-restore"  # as --train: put back the case and punctuation of speech lines
POOLINGS = ("auto", "cls", "mean", "last")  # what a classifier reads (heads.resolve_pooling)
GENERATION_METRICS = ("exact_match", "bleu", "chrf")

# The usual fine-tuning recipe (BERT, Devlin et al.): AdamW with beta2 0.999 and light weight decay,
# linear warmup then linear decay to zero, evaluation on the whole validation split.
FINETUNE_TRAIN_DEFAULTS: dict[str, Any] = dict(
    max_steps=500,
    batch_size=16,
    lr=1e-4,
    warmup_steps=50,
    eval_every=50,
    weight_decay=0.01,
    beta2=0.999,
    schedule="linear",
    min_lr_ratio=0.0,
    checkpoint_every=0,
    eval_batches=0,
    sample_tokens=0,
    log_every=10,
)


@dataclass
class FinetuneConfig(ConfigBase):
    """A fine-tuning run: the task and its files, the backbone, what learns, and the recipe."""

    name: str = "finetune"
    out_dir: str | None = None  # default runs/<name>
    task: str = "classify"  # classify | seq2seq | completion
    train_file: str = ""  # CSV / JSONL, "shakespeare-genre" or "shakespeare-restore"
    val_file: str = ""  # required for files; the bundled tasks have their own validation plays
    model: str = "minilm"  # model / run / HF directory, "minilm", or a model preset (from scratch)
    tokenizer: str | None = None  # tokenizer.json; default: the model directory's
    init: str = "pretrained"  # pretrained | scratch (same architecture, random weights)
    params: str = "all"  # all | no-embeddings | top-k:N | bitfit | lora
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    max_len: int = 128  # tokens per example (capped by the model's max_positions)
    pooling: str = "auto"  # classify: auto | cls | mean | last (heads.resolve_pooling)
    metric: str | None = None  # picks best/: default macro_f1 (classify) or loss
    patience: int = 0  # stop after this many evaluations without improvement; 0: never
    passage_chars: int = 512  # bundled tasks: passage length in characters (whole lines)
    max_per_class: int = 0  # genre task: cap on training passages per genre (0: all)
    val_per_play: int = 0  # bundled tasks: validation passages per held-out play, evenly spread (0: all)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE_TRAIN_DEFAULTS))

    @property
    def run_dir(self) -> str:
        return self.out_dir or f"runs/{self.name}"

    @property
    def best_metric(self) -> str:
        return self.metric or ("macro_f1" if self.task == "classify" else "loss")

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: unknown {self.task!r}; choose one of {', '.join(TASKS)}")
        parse_mode(self.params)  # refuses an unknown selection before anything loads
        if self.init not in ("pretrained", "scratch"):
            raise ConfigError(f"init: unknown {self.init!r}; choose pretrained or scratch")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: unknown {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        allowed = ("loss", "accuracy", "macro_f1") if self.task == "classify" else ("loss",) + GENERATION_METRICS
        if self.best_metric not in allowed:
            raise ConfigError(
                f"metric: {self.best_metric!r} is not a {self.task} metric; choose one of {', '.join(allowed)}"
            )
        if self.train_file == GENRE_SOURCE and self.task != "classify":
            raise ConfigError(f"train_file: {GENRE_SOURCE} is a classify task; set task=classify")
        if self.train_file == RESTORE_SOURCE and self.task == "classify":
            raise ConfigError(
                f"train_file: {RESTORE_SOURCE} is a seq2seq or completion task; set task=seq2seq "
                "(encoder-decoder) or task=completion (decoder)"
            )
        for name in ("max_len", "passage_chars"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("patience", "max_per_class", "val_per_play"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FinetuneConfig:
        if name not in FINETUNE_PRESETS:
            raise ConfigError(
                f"preset: unknown fine-tuning preset {name!r}; choose one of {', '.join(FINETUNE_PRESETS)}"
            )
        d = copy.deepcopy(FINETUNE_PRESETS[name])
        d.update(overrides)
        return cls.from_dict(d)


FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    # Which kind of play is a passage from? The packaged MiniLM, all parameters, ~9 CPU-minutes.
    # Passages of ~320 characters (~90 MiniLM tokens), 200 per genre; 40 per held-out play.
    "shakespeare-genre": dict(
        name="shakespeare-genre",
        task="classify",
        train_file=GENRE_SOURCE,
        model="minilm",
        params="all",
        max_len=128,
        patience=2,
        passage_chars=320,
        max_per_class=200,
        val_per_play=40,
        train=dict(FINETUNE_TRAIN_DEFAULTS, max_steps=80, batch_size=16, lr=1e-4, warmup_steps=8, eval_every=20),
    ),
    # Put back case and punctuation: the span-corruption T5 of `lmforge train --preset shakespeare-t5`
    # fine-tuned on ~120-character passages of speeches; chrF and exact match on 32 per held-out play.
    "shakespeare-restore": dict(
        name="shakespeare-restore",
        task="seq2seq",
        train_file=RESTORE_SOURCE,
        model="runs/shakespeare-t5",
        max_len=64,
        passage_chars=120,
        val_per_play=32,
        metric="chrf",
        train=dict(FINETUNE_TRAIN_DEFAULTS, max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=200),
    ),
    # The same task as prompt -> completion for the quick-start decoder (runs/shakespeare-gpt).
    "shakespeare-restore-gpt": dict(
        name="shakespeare-restore-gpt",
        task="completion",
        train_file=RESTORE_SOURCE,
        model="runs/shakespeare-gpt",
        max_len=128,
        passage_chars=120,
        val_per_play=32,
        metric="chrf",
        train=dict(FINETUNE_TRAIN_DEFAULTS, max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=200),
    ),
}
