"""The pretraining job: a :class:`RunConfig` in, a trained model directory out.

``pretrain(cfg)`` prepares the dataset if it is missing (tokenizer trained on the train split,
tokens written to memmap shards), sizes the model's vocabulary and special tokens from the
tokenizer, saves the resolved config in the run directory, and runs the :class:`Trainer` with
the objective's batches; ``resume=True`` continues from the newest good checkpoint. What it
writes where: :mod:`lmforge.train.rundir` (``best/`` holds the model of the lowest validation loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import device as dev
from lmforge.config import ModelConfig
from lmforge.data.objectives import OBJECTIVES
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models import build_model
from lmforge.nn import eval_mode
from lmforge.tokenizer import KINDS, special_id
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as D
from lmforge.train.config import RunConfig, TrainConfig
from lmforge.train.engine import FitResult, Trainer
from lmforge.train.objective_metrics import (
    hidden_token_metrics,
    left_to_right_metrics,
    most_frequent_token,
    objective_metrics,
)
from lmforge.train.rundir import RunDir


def dataset_dir(cfg: RunConfig) -> Path:
    """Where the prepared dataset lives: ``data.path``, else ``data/<source>-<tokenizer><vocab>``."""
    if cfg.data.path:
        return Path(cfg.data.path)
    source = Path(cfg.data.source.split(",")[0]).stem if cfg.data.source != "shakespeare" else "shakespeare"
    tok = Path(cfg.data.tokenizer).stem if cfg.data.tokenizer.endswith(".json") else cfg.data.tokenizer
    return Path("data") / f"{source}-{tok}{cfg.data.vocab_size if tok != 'char' else ''}"


def prepare_dataset(cfg: RunConfig, info: D.DistInfo, log: Callable[[str], None]):
    """Open the run's dataset, preparing it first (on rank 0, the others wait) if it is not there yet."""
    from lmforge.data import open_dataset, prepare
    from lmforge.data.shards import META_FILE

    d = cfg.data
    path = dataset_dir(cfg)
    if info.is_main and not (path / META_FILE).is_file():
        sentinels = d.sentinels if d.sentinels is not None else OBJECTIVES[d.objective].sentinels
        log(
            f"preparing {path} from {d.source} (tokenizer: {d.tokenizer}"
            f"{f', vocab {d.vocab_size}' if d.tokenizer != 'char' else ''})"
        )
        prepare(
            [s.strip() for s in d.source.split(",")],
            path,
            tokenizer=d.tokenizer,
            vocab_size=d.vocab_size,
            sentinels=sentinels,
            val_fraction=d.val_fraction,
            seed=cfg.train.seed,
            progress=cfg.train.progress,
        )
    D.barrier()
    dataset = open_dataset(path)
    tok = dataset.meta["tokenizer"]
    if d.tokenizer in KINDS and tok["kind"] != d.tokenizer:
        raise ConfigError(
            f"data.path: {path} was prepared with a {tok['kind']} tokenizer, not {d.tokenizer}; "
            "set data.path to a new directory (or data.tokenizer to its kind)"
        )
    return dataset


def fit_model_to_tokenizer(model: ModelConfig, tokenizer, objective: str | None = None) -> ModelConfig:
    """The model config with the tokenizer's vocabulary size and special-token ids; for a decoder
    pretrained on the causal stream, where documents are separated by EOS and BOS never occurs,
    EOS becomes the token that texts start after (``text_start_id``) in scoring and generation."""
    ids = {name: special_id(tokenizer, name) for name in ("pad", "bos", "eos", "mask", "cls", "sep")}
    changes = {"vocab_size": tokenizer.vocab_size, **{f"{k}_id": v for k, v in ids.items()}}
    if model.arch == "encoder-decoder":  # as the span / infill samplers do: the decoder starts from pad
        changes["decoder_start_id"] = ids["pad"] if ids["pad"] is not None else ids["bos"]
    causal_like = (model.arch, objective) in (("decoder", "causal"), ("xlnet", "plm"))  # both read packed EOS streams
    if causal_like and ids["eos"] is not None and model.text_start_id is None:
        changes["text_start_id"] = ids["eos"]
    return model.replace(**changes)


def objective_options(cfg: RunConfig) -> dict[str, Any]:
    """The training sampler's options, from the ``data.`` section (the objective registry maps them)."""
    return OBJECTIVES[cfg.data.objective].options_from(cfg.data)


def eval_objective_options(cfg: RunConfig) -> dict[str, Any]:
    """The held-out sampler's options: the training ones with the reference corruption
    (:attr:`~lmforge.data.Objective.eval_options`), so that accuracies compare across recipes."""
    return OBJECTIVES[cfg.data.objective].options_from(cfg.data, held_out=True)


def make_batch_sources(cfg: RunConfig, dataset, info: D.DistInfo):
    """The training sampler (this rank's rows of each global micro-batch) and the evaluation batches."""
    from lmforge.data import make_batches

    d, t = cfg.data, cfg.train
    options = objective_options(cfg)
    micro = t.batch_size // t.grad_accum
    if micro % info.world_size:
        raise ConfigError(
            f"train.batch_size: micro-batches of {micro} sequences (batch_size / grad_accum) do not "
            f"split over {info.world_size} processes; use a multiple of {info.world_size}"
        )
    train = make_batches(
        d.objective,
        dataset,
        micro,
        d.seq_len,
        seed=t.seed,
        split="train",
        rank=info.rank,
        world_size=info.world_size,
        **options,
    )
    eval_size = 2 * micro  # no gradients to keep: larger batches fit
    eval_options = eval_objective_options(cfg)

    def val_sampler(whole: bool):
        return make_batches(
            d.objective,
            dataset,
            eval_size,
            d.seq_len,
            seed=t.seed + 1,
            split="val",
            rank=info.rank,
            world_size=info.world_size,
            order="sequential" if whole else "random",
            **eval_options,
        )

    def eval_batches(max_batches: int | None):
        """The same batches at every evaluation: a fixed random sample, or (None) every window of the split
        once, in order (the last batch's rows past the end wrap around; their labels are ignored)."""
        whole = max_batches is None and OBJECTIVES[d.objective].walk_eval
        val = val_sampler(whole)
        if not whole:
            for _ in range(max_batches or val.batches_per_epoch):
                yield val.next_batch()
            return
        windows, local = val.windows_per_epoch, eval_size // info.world_size
        for k in range(-(-windows // eval_size)):
            batch = val.next_batch()
            first = k * eval_size + info.rank * local  # global index of this rank's first row
            batch["labels"][torch.arange(first, first + local) >= windows] = -100
            yield batch

    val_sampler(False)  # refuse an unusable validation split now, not at the first evaluation

    return train, eval_batches


# The fields that size each part of count_params' breakdown, to name in a refusal.
_PART_FIELDS = {
    "position_embedding": ("max_positions", "d_model"),
    "segment_embedding": ("type_vocab_size", "d_model"),
    "blocks": ("n_layer", "n_encoder_layer", "n_decoder_layer", "d_model", "d_ff"),
}


def check_memory(cfg: RunConfig, device: torch.device, world_size: int) -> None:
    """Refuse, before anything is allocated, a run whose training memory (:func:`~lmforge.accounting.
    estimate_memory`) exceeds the device, naming the fields that make it so."""
    from lmforge.accounting import count_params, estimate_memory, human, human_bytes

    have = dev.memory_bytes(device)
    if have is None:
        return
    t, m = cfg.train, cfg.model
    micro = max(1, t.batch_size // t.grad_accum // world_size)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dev.resolve_dtype(t.dtype, device), "fp32")
    est = estimate_memory(
        m,
        micro,
        cfg.data.seq_len,
        world_size,
        t.strategy if world_size > 1 else "ddp",
        t.activation_checkpointing,
        precision,
    )
    if est.total <= have:
        return
    where = f"{device.type} device's {human_bytes(have)}" if device.type != "cpu" else f"machine's {human_bytes(have)}"
    state = est.total - est.activations
    if state <= have:  # the model fits: its activations do not
        raise ConfigError(
            f"train.batch_size: micro-batches of {micro} x {cfg.data.seq_len} tokens need about "
            f"{human_bytes(est.activations)} of activations, more than this {where}; raise "
            f"train.grad_accum, lower train.batch_size or data.seq_len, or set "
            f"train.activation_checkpointing=true"
        )
    pc = count_params(m)
    part, n = max(pc.breakdown.items(), key=lambda kv: kv[1])
    names = [
        k
        for k in _PART_FIELDS.get(part.rsplit(".", 1)[-1], ("d_model",))
        if getattr(m, k) is not None
        and (m.arch == "encoder-decoder" or k not in ("n_encoder_layer", "n_decoder_layer"))
    ]
    sizes = ", ".join(f"{k} {getattr(m, k)}" for k in names)
    raise ConfigError(
        f"{' / '.join(f'model.{k}' for k in names)}: the model has {human(pc.total)} parameters "
        f"({human(n)} in {part}: {sizes}); its weights, gradients and AdamW state need about "
        f"{human_bytes(state)}, more than this {where}; make it smaller"
    )


def tokens_per_byte(dataset, split: str = "val") -> float:
    """Tokens per UTF-8 byte of a split: bits per byte = loss (nats/token) x this / ln 2."""
    return dataset.meta["splits"][split]["tokens"] / dataset.num_bytes(split)


def sample_fn(generate: Callable, tokenizer, cfg: TrainConfig) -> Callable[[nn.Module], str]:
    """The text sample shown at each evaluation of a decoder: ``cfg.sample_tokens`` tokens after
    ``cfg.sample_prompt``, drawn by ``generate`` (:func:`lmforge.infer.generate`, passed in: the
    inference layer sits above training)."""

    def sample(m: nn.Module) -> str:
        room = m.config.max_positions - len(tokenizer.encode(cfg.sample_prompt)) - 1  # (+ BOS)
        out = generate(
            m,
            tokenizer,
            [cfg.sample_prompt],
            max_new_tokens=max(1, min(cfg.sample_tokens, room)),
            temperature=cfg.sample_temperature,
            seed=cfg.seed,
        )
        return cfg.sample_prompt + out[0].text

    return sample


def pretrain(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    *,
    generate: Callable | None = None,
    fill_spans: Callable | None = None,
) -> FitResult:
    """Prepare data, build the model and train it as ``cfg`` says; see the module docstring.

    What the job borrows from the inference layer comes in as functions (:func:`lmforge.pretrain`
    passes them): ``generate`` (:func:`lmforge.infer.generate`) draws the text samples of a
    decoder at each evaluation, ``fill_spans`` (:func:`lmforge.infer.fill.span_filling_metrics`)
    is the span objective's final greedy check. None: no samples, no check."""
    runtime = D.setup_runtime(cfg.train)
    device, info = runtime.device, runtime.dist
    say = log if info.is_main else (lambda msg: None)

    run_dir = Path(cfg.run_dir)
    layout = RunDir(run_dir)
    if not resume and not overwrite and ckpt.list_checkpoints(run_dir):
        raise ConfigError(
            f"{run_dir} already holds checkpoints; continue it with --resume {run_dir}, start afresh "
            "with --overwrite, or pick another --name / --out"
        )
    start = ckpt.latest_valid(run_dir, say) if resume else None
    if resume and start is None:
        raise CheckpointError(f"{run_dir}: no usable checkpoint to resume from")

    dataset = prepare_dataset(cfg, info, say)
    tokenizer = dataset.tokenizer
    cfg = cfg.replace(model=fit_model_to_tokenizer(cfg.model, tokenizer, cfg.data.objective))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a fresh start: no log lines or plots of an earlier attempt
            layout.clear()
        ckpt.remove_partial(run_dir)  # what a killed earlier attempt left half written
        _write_config(cfg, layout.config)
    say(f"run {run_dir}: {cfg.model.arch} model, objective {cfg.data.objective}, dataset {dataset_dir(cfg)}")

    check_memory(cfg, device, info.world_size)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (FSDP shards them as they are)
    model = build_model(cfg.model)
    train_batches, eval_batches = make_batch_sources(cfg, dataset, info)
    metric_fn = objective_metrics(cfg.data.objective, tokenizer, dataset.split("train"))
    samples = generate is not None and cfg.train.sample_tokens > 0 and cfg.model.arch == "decoder"
    trainer = Trainer(
        model,
        cfg.train,
        train_batches,
        eval_batches=eval_batches,
        metric_fn=metric_fn,
        run_dir=run_dir,
        tokenizer=tokenizer,
        sample_fn=sample_fn(generate, tokenizer, cfg.train) if samples else None,
        tokens_per_byte=tokens_per_byte(dataset) if cfg.data.objective == "causal" else None,
        log=log,
        runtime=runtime,
    )
    if start is not None:
        trainer.resume(start)
    try:
        result = trainer.fit()
        if cfg.data.objective == "span" and fill_spans is not None and not result.stopped_by:
            result.metrics.update(
                _greedy_span_metrics(fill_spans, trainer, tokenizer, eval_batches, cfg.train.eval_batches, say)
            )
        if cfg.data.objective == "plm" and not result.stopped_by:
            result.metrics.update(_xlnet_held_out_metrics(trainer.model, dataset, cfg.data.seq_len, tokenizer, say))
    finally:
        D.teardown()
    if info.is_main and not result.stopped_by:
        m = result.metrics
        shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if math.isfinite(v))
        say(
            f"done: {result.step} steps, {result.tokens:,} tokens in {result.train_seconds:.0f} s "
            f"({result.tokens / max(result.train_seconds, 1e-9):,.0f} tokens/s); validation: {shown}"
        )
        say(f"best model: {layout.best}; last checkpoint: {result.checkpoint}")
    return result


def _greedy_span_metrics(
    fill_spans: Callable, trainer: Trainer, tokenizer, eval_batches, max_batches: int, say: Callable[[str], None]
) -> dict[str, float]:
    """Span corruption's final check: how many dropped spans greedy decoding restores exactly (the
    periodic evaluations' batches; teacher forcing, in the engine's metrics, hides error propagation)."""
    model = trainer.model
    with eval_mode(model):
        m = fill_spans(model, tokenizer, eval_batches(max_batches or None))
    say(f"greedy span filling on {int(m['spans']):,} held-out spans: exact match {m['span_exact_match']:.4f}")
    return {"span_exact_match": m["span_exact_match"]}


def _xlnet_held_out_metrics(model, dataset, seq_len: int, tokenizer, say: Callable[[str], None]) -> dict[str, float]:
    """The permutation LM's final checks on the held-out split: the left-to-right score (a causal
    score, in a decoder's bits per byte) and the masked LM's test (15% hidden, predicted from the
    rest), beside always answering the most frequent training token."""
    held_out = dataset.split("val")
    m = left_to_right_metrics(model, held_out, seq_len, tokens_per_byte(dataset))
    say(f"left to right on {int(m.pop('l2r_tokens')):,} held-out tokens: {m['l2r_bpb']:.4f} bits per byte")
    frequent = most_frequent_token(dataset.split("train"), tokenizer.vocab_size, tokenizer.special_ids)
    hidden = hidden_token_metrics(model, held_out, seq_len, frequent)
    say(
        f"15% of held-out positions hidden, predicted from the rest (the masked LM's test): accuracy "
        f"{hidden['hidden_accuracy']:.4f}, most frequent token {hidden['hidden_baseline']:.4f}"
    )
    return {**m, **hidden}


def _write_config(cfg: RunConfig, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
