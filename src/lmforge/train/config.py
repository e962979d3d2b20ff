"""Configuration of a training run: what data, which model, how to train, and named run presets.

A :class:`RunConfig` nests a :class:`~lmforge.config.ModelConfig`, a :class:`DataConfig` and a
:class:`TrainConfig`; it round-trips through JSON / YAML and takes dotted overrides
(``{"model.n_layer": "6", "train.max_steps": "5000"}``), like every lmforge config.

Batch sizes are global: ``train.batch_size`` sequences per optimizer step, split over
``grad_accum`` micro-steps and over the ranks of a distributed run, so a config means the same
optimisation on one CPU and on eight GPUs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmforge.config import MODEL_PRESETS, ConfigBase, ModelConfig
from lmforge.data.objectives import OBJECTIVES
from lmforge.errors import ConfigError

SCHEDULES = ("cosine", "linear", "wsd", "constant")
OPTIMIZERS = ("adamw", "muon")
NS_DTYPES = ("auto", "fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")
MAX_THREADS = 1024  # torch's thread pools crash far above the core count


@dataclass
class DataConfig(ConfigBase):
    """Where the tokens come from and how they are turned into training examples.

    ``source``: ``"shakespeare"`` (the bundled corpus, standard held-out plays) or text / JSONL files
    (comma separated). The prepared dataset goes to ``path`` (default ``data/<name>``, reused when
    it is already there and matches). ``tokenizer``: a kind to train on the train split (bpe,
    wordpiece, unigram, char) or the path of a ``tokenizer.json`` / model directory to reuse.
    """

    source: str = "shakespeare"
    path: str | None = None
    tokenizer: str = "bpe"
    vocab_size: int = 2048
    objective: str = "causal"
    seq_len: int = 128
    mlm_probability: float = 0.15  # mlm, mlm+nsp
    noise_density: float = 0.15  # span, infill: fraction of tokens corrupted
    mean_span_length: float = 3.0  # span, infill
    plm_k: float = 6.0  # plm: predict the last 1/K of each factorisation order (XLNet's K)
    sentinels: int | None = None  # <extra_id_N> tokens to add; default 100 for span corruption, else the kind's
    val_fraction: float = 0.1  # files (not the bundled corpus): held-out share of the documents
    # causal: attention does not cross the EOS between packed documents (training and evaluation
    # windows); positions stay those of the window
    doc_mask: bool = False

    section: ClassVar[str] = "data."

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"data.objective: unknown {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        for name in ("vocab_size", "seq_len", "mean_span_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name}: must be positive, got {getattr(self, name)}")
        for name in ("mlm_probability", "noise_density", "val_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"data.{name}: must be in (0, 1), got {getattr(self, name)}")
        if self.doc_mask and "doc_mask" not in OBJECTIVES[self.objective].config_options:
            raise ConfigError(
                f"data.doc_mask: masks packed documents of the causal objective, not {self.objective!r}; "
                "set data.doc_mask=false"
            )
        if not self.plm_k > 1:
            raise ConfigError(f"data.plm_k: must be greater than 1 (XLNet predicts the last 1/K), got {self.plm_k}")
        if self.sentinels is not None and self.sentinels < 0:
            raise ConfigError(f"data.sentinels: must be >= 0, got {self.sentinels}")


@dataclass
class TrainConfig(ConfigBase):
    """How to optimise: AdamW (or Muon + AdamW), a learning-rate schedule, batch, evaluation,
    checkpoints, devices."""

    max_steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, over all ranks and micro-steps
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    schedule: str = "cosine"  # cosine | linear | wsd (warmup-stable-decay) | constant, all after warmup
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: the share of max_steps spent in the final decay
    weight_decay: float = 0.1  # on matrices only: biases, norms and embeddings are not decayed
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # muon: Muon for the 2-D matrices inside the blocks, AdamW (the settings above) for embeddings,
    # heads, norms and biases; lmforge.train.optim
    optimizer: str = "adamw"
    muon_lr: float = 0.02  # Muon's peak learning rate; the schedule scales it as it scales lr
    muon_momentum: float = 0.95
    muon_ns_dtype: str = "auto"  # the Newton-Schulz iteration: auto (bf16 on CUDA, else fp32) | fp32 | bf16
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 250  # 0: evaluate only at the end
    eval_batches: int = 20  # batches per periodic evaluation; the final one reads the whole val split
    checkpoint_every: int = 500  # 0: only at the end (and on SIGINT / SIGTERM)
    keep_checkpoints: int = 2  # the last K step-N checkpoints are kept (best/ is kept apart)
    sample_tokens: int = 200  # length of the text sample printed at each evaluation (decoders); 0: none
    sample_prompt: str = "\n"
    sample_temperature: float = 0.8
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~30% more time
    strategy: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2 fully_shard, each block then the root)
    max_nonfinite: int = 5  # stop after this many non-finite steps in a row
    threads: int = 0  # CPU threads for torch (0: torch's default)
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0: the GPU table / a timed matmul on the CPU
    tensorboard: bool = True  # write tb/ when TensorBoard is installed
    progress: bool = True  # a tqdm progress bar

    section: ClassVar[str] = "train."

    def warmup_for(self, max_steps: int) -> int:
        """This recipe's warmup for a run of ``max_steps`` steps: at most a tenth of it, at least one step."""
        return max(1, min(self.warmup_steps, max_steps // 10))

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule: unknown {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy: unknown {self.strategy!r}; choose ddp or fsdp")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer: unknown {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.dtype == "int8":
            raise ConfigError(
                "train.dtype: int8 is weight-only inference on the CPU (generate, score, serve --dtype int8), "
                "not training; choose auto, fp32, bf16 or fp16"
            )
        if self.muon_ns_dtype not in NS_DTYPES:
            raise ConfigError(
                f"train.muon_ns_dtype: unknown {self.muon_ns_dtype!r}; choose one of {', '.join(NS_DTYPES)}"
            )
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise ConfigError(
                "train.optimizer: muon orthogonalises whole matrices, which FSDP shards; use train.strategy=ddp"
            )
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"train.muon_momentum: must be in [0, 1), got {self.muon_momentum}")
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "lr",
            "muon_lr",
            "eps",
            "log_every",
            "keep_checkpoints",
            "max_nonfinite",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: must be positive, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "weight_decay",
            "grad_clip",
            "sample_tokens",
            "threads",
            "peak_flops",
            "sample_temperature",
            "seed",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"train.decay_fraction: must be in (0, 1], got {self.decay_fraction}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"train.beta1/beta2: must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.threads > MAX_THREADS:
            raise ConfigError(f"train.threads: {self.threads} is more than {MAX_THREADS}; use about one per core")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size: {self.batch_size} is not divisible by grad_accum={self.grad_accum}")


@dataclass
class RunConfig(ConfigBase):
    """A whole run: its name and directory, the model, the data and the training recipe."""

    name: str = "run"
    out_dir: str | None = None  # default runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> str:
        return self.out_dir or f"runs/{self.name}"

    def validate(self) -> None:
        spec, name = OBJECTIVES[self.data.objective], self.data.objective
        if self.model.arch != spec.arch:
            raise ConfigError(
                f"data.objective: {name!r} trains an {spec.arch} model, but model.arch is "
                f"{self.model.arch!r}; set model.arch={spec.arch} or pick another objective"
            )
        if spec.nsp_head and not self.model.nsp_head:
            raise ConfigError(f"data.objective: {name} needs the next-sentence head; set model.nsp_head=true")
        if self.model.nsp_head and not spec.nsp_head:  # an untrained head (and idle DDP parameters)
            raise ConfigError(
                f"data.objective: {name} does not train the next-sentence head; set model.nsp_head=false "
                "or use the mlm+nsp objective"
            )
        if self.model.positions in ("learned",) and self.data.seq_len > self.model.max_positions:
            raise ConfigError(
                f"data.seq_len: {self.data.seq_len} exceeds model.max_positions="
                f"{self.model.max_positions}; raise model.max_positions or lower data.seq_len"
            )

    @classmethod
    def from_preset(cls, name: str) -> RunConfig:
        if name not in RUN_PRESETS:
            raise ConfigError(f"preset: unknown run preset {name!r}; choose one of {', '.join(RUN_PRESETS)}")
        return cls.from_dict(copy.deepcopy(RUN_PRESETS[name]))


def _model(preset: str, **changes: Any) -> dict[str, Any]:
    return {**MODEL_PRESETS[preset], **changes}


# The schedule of the seconds-long tiny-* presets (tests and smoke checks).
_TINY_TRAIN = dict(
    max_steps=20,
    batch_size=8,
    lr=3e-3,
    warmup_steps=2,
    eval_every=10,
    eval_batches=2,
    checkpoint_every=10,
    log_every=1,
    progress=False,
)


# The model's vocab_size and special-token ids are set from the tokenizer when the run starts.
RUN_PRESETS: dict[str, dict[str, Any]] = {
    # The quick start: a 1.1M-parameter GPT (4 x 128, context 128) on the bundled Shakespeare with a
    # 2048-token byte-level BPE, 800 steps of 32 x 128 tokens (3.3M tokens, ~2.1 epochs): 5 min 46 s on 2 CPU
    # cores including data preparation; validation 2.27 bits per byte (nanoGPT's CPU recipe: 2.77).
    "shakespeare-gpt": dict(
        name="shakespeare-gpt",
        model=_model("gpt-tiny", max_positions=128, n_layer=4, d_model=128, n_head=4),
        data=dict(source="shakespeare", tokenizer="bpe", vocab_size=2048, objective="causal", seq_len=128),
        # Muon: -0.22 bits per byte after 60 s of training and -0.15 after 200 s at equal wall time
        # (docs/training.md, "Recipe switches")
        train=dict(
            optimizer="muon",
            max_steps=800,
            batch_size=32,
            lr=3e-3,
            warmup_steps=50,
            min_lr_ratio=0.1,
            weight_decay=0.1,
            eval_every=200,
            eval_batches=8,
            checkpoint_every=200,
            log_every=10,
        ),
    ),
    # A masked LM that leaves the unigram plateau in minutes (docs/training.md, "The encoder's plateau"):
    # pre-norm, rotary positions, windows of 64 tokens, 30% of the tokens masked, a high peak learning rate,
    # Muon for the blocks' matrices (+1.3 points at [MASK] over AdamW at 4,000 steps).
    "shakespeare-bert": dict(
        name="shakespeare-bert",
        model=_model(
            "bert-tiny",
            max_positions=64,
            n_layer=4,
            d_model=128,
            n_head=4,
            norm_position="pre",
            positions="rope",
            nsp_head=False,
        ),
        data=dict(
            source="shakespeare",
            tokenizer="wordpiece",
            vocab_size=4096,
            objective="mlm",
            seq_len=64,
            mlm_probability=0.3,
        ),
        # 4,000 steps of 32 x 64 tokens (8.2M): 30.5% at [MASK] held out (AdamW: 29.2%) (docs/training.md)
        train=dict(
            optimizer="muon",
            max_steps=4000,
            batch_size=32,
            lr=3e-3,
            warmup_steps=200,
            eval_every=500,
            eval_batches=8,
            checkpoint_every=1000,
        ),
    ),
    # XLNet's permutation LM at the size of the GPT and BERT presets (4 x 128), on the GPT preset's byte-level
    # BPE (WordPiece drops line breaks, so its bits per byte would not compare) and windows of 64 tokens:
    # 2,500 steps of 32 x 64 tokens (5.1M), a sixth of each order predicted. At the end the held-out plays
    # are scored left to right (l2r_bpb), as the decoder is (docs/models.md, "XLNet").
    "shakespeare-xlnet": dict(
        name="shakespeare-xlnet",
        model=_model("xlnet-tiny", max_positions=64, n_layer=4, d_model=128, n_head=4),
        data=dict(source="shakespeare", tokenizer="bpe", vocab_size=2048, objective="plm", seq_len=64, plm_k=6.0),
        train=dict(
            max_steps=2500,
            batch_size=32,
            lr=3e-3,
            warmup_steps=200,
            eval_every=500,
            eval_batches=8,
            checkpoint_every=500,
        ),
    ),
    # T5-style span corruption for an encoder-decoder, on the encoder's recipe: rotary positions, windows of
    # 64 tokens, a high peak learning rate; Muon and T5's fan-in init, so that the decoder learns to read its
    # source (docs/training.md, "The encoder-decoder's blind decoder"), and 3 + 3 layers of 128, twice as
    # fast per token as 192, for 2,000 steps of 64 x 64 source tokens.
    "shakespeare-t5": dict(
        name="shakespeare-t5",
        model=_model(
            "seq2seq-tiny", max_positions=64, n_layer=3, d_model=128, n_head=4, positions="rope", init="fan_in"
        ),
        data=dict(source="shakespeare", tokenizer="unigram", vocab_size=4096, objective="span", seq_len=64),
        train=dict(
            optimizer="muon",
            max_steps=2000,
            batch_size=64,
            lr=3e-3,
            warmup_steps=100,
            eval_every=200,
            eval_batches=8,
            checkpoint_every=500,
        ),
    ),
    # Seconds-long runs for tests and smoke checks (char tokenizer, two-layer models).
    "tiny-gpt": dict(
        name="tiny-gpt",
        model=_model("gpt-tiny", max_positions=32),
        data=dict(tokenizer="char", vocab_size=256, objective="causal", seq_len=32),
        train=dict(_TINY_TRAIN, sample_tokens=16),
    ),
    "tiny-bert": dict(
        name="tiny-bert",
        model=_model("bert-tiny", max_positions=32),
        data=dict(tokenizer="char", vocab_size=256, objective="mlm+nsp", seq_len=32),
        train=dict(_TINY_TRAIN),
    ),
    "tiny-xlnet": dict(
        name="tiny-xlnet",
        model=_model("xlnet-tiny", max_positions=32),
        data=dict(tokenizer="char", vocab_size=256, objective="plm", seq_len=32),
        train=dict(_TINY_TRAIN, sample_tokens=0),
    ),
    "tiny-t5": dict(
        name="tiny-t5",
        model=_model("seq2seq-tiny", max_positions=32),
        data=dict(tokenizer="char", vocab_size=256, objective="span", seq_len=32),
        train=dict(_TINY_TRAIN, sample_tokens=0),
    ),
}
