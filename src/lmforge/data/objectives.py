"""Pretraining objectives as resumable batch samplers over token shards.

=========  ==================================================================  ==========================
objective  one example                                                         batch keys
=========  ==================================================================  ==========================
causal     a window of T+1 packed tokens; labels[t] = input_ids[t+1]           input_ids, labels
           (doc_mask: the document of each position, to attend within it)    (+ document_ids)
mlm        [CLS] window [SEP]; 15% of tokens chosen: 80% [MASK], 10% random,   input_ids, attention_mask,
           10% kept (BERT); labels -100 where not chosen                       labels
mlm+nsp    [CLS] A [SEP] B [SEP]: B follows A (label 0) or comes from another  input_ids, token_type_ids,
           document (label 1), half each; plus MLM on the pair                 attention_mask, labels,
                                                                               next_sentence_label
span       T5 span corruption: 15% of tokens in spans of mean length 3, each   input_ids, attention_mask,
           replaced by a sentinel; the target lists sentinel + span            labels, decoder_input_ids
infill     BART text infilling: spans of Poisson(3) length (30% of tokens)     input_ids, attention_mask,
           each replaced by one [MASK]; the target is the original text        labels, decoder_input_ids
plm        XLNet permutation LM: a random factorisation order per window; the  input_ids, perm_mask,
           last 1/K of the order predicted, each from what precedes it there   target_mapping, labels
=========  ==================================================================  ==========================

The samplers live by paradigm (:mod:`~lmforge.data.sampler`: the base and causal;
:mod:`~lmforge.data.masking`; :mod:`~lmforge.data.spans`; :mod:`~lmforge.data.permutation`); this
module is their registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lmforge.data.masking import MLMSampler, NSPSampler
from lmforge.data.permutation import PermutationSampler
from lmforge.data.sampler import CausalSampler, Sampler
from lmforge.data.shards import Dataset, open_dataset
from lmforge.data.spans import InfillSampler, SpanSampler
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer


@dataclass(frozen=True)
class Objective:
    """One pretraining objective: its sampler, the model it trains and the options it takes.

    Config validation (:class:`~lmforge.train.config.RunConfig`) and the run
    (:mod:`lmforge.train.run`) read these fields; nothing else lists the objectives."""

    sampler: type[Sampler]
    arch: str  # the model architecture it trains
    config_options: dict[str, str]  # sampler option -> the ``data.`` config field that sets it
    options: tuple[str, ...] = ()  # further sampler options, for Python callers
    # the held-out corruption, fixed at the reference recipe whatever the run trains with, so that
    # held-out accuracies compare across recipes (BERT's 15% masked, T5's 15% noise in spans of 3)
    eval_options: dict[str, float] = field(default_factory=dict)
    nsp_head: bool = False  # trains (and needs) the next-sentence head
    sentinels: int | None = None  # <extra_id_N> tokens a dataset prepared for it gets by default
    walk_eval: bool = True  # held-out evaluation can walk every window once, in order (NSP pairs are drawn)

    @property
    def sampler_options(self) -> tuple[str, ...]:
        return (*self.config_options, *self.options)

    def options_from(self, data: Any, held_out: bool = False) -> dict[str, Any]:
        """The sampler options a ``data.`` config section sets (flags only when on); ``held_out``:
        with the reference corruption of :attr:`eval_options`."""
        options = {opt: getattr(data, name) for opt, name in self.config_options.items()}
        options = {k: v for k, v in options.items() if v is not False}
        return {**options, **self.eval_options} if held_out else options


_MASKED = {"mlm_probability": "mlm_probability"}
OBJECTIVES: dict[str, Objective] = {
    "causal": Objective(CausalSampler, "decoder", {"doc_mask": "doc_mask"}),
    "mlm": Objective(MLMSampler, "encoder", _MASKED, ("whole_word",), {"mlm_probability": 0.15}),
    "mlm+nsp": Objective(
        NSPSampler, "encoder", _MASKED, ("whole_word",), {"mlm_probability": 0.15}, nsp_head=True, walk_eval=False
    ),
    "span": Objective(
        SpanSampler,
        "encoder-decoder",
        {"noise_density": "noise_density", "mean_span_length": "mean_span_length"},
        ("decoder_start_id",),
        {"noise_density": 0.15, "mean_span_length": 3.0},
        sentinels=100,
    ),
    "infill": Objective(
        InfillSampler,
        "encoder-decoder",
        {"noise_density": "noise_density", "poisson_lambda": "mean_span_length"},
        ("decoder_start_id",),
    ),
    "plm": Objective(PermutationSampler, "xlnet", {"plm_k": "plm_k"}),
}


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective: unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def make_batches(
    objective: str,
    dataset: Dataset | str | os.PathLike,
    batch_size: int,
    seq_len: int,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    split: str = "train",
    *,
    rank: int = 0,
    world_size: int = 1,
    order: str = "random",
    **options: Any,
) -> Sampler:
    """A sampler of ``objective`` batches over ``split`` of a dataset (object or directory).

    Options: causal: ``doc_mask`` (False; True adds ``document_ids``); mlm / mlm+nsp:
    ``mlm_probability`` (0.15), ``whole_word`` (False); span: ``noise_density`` (0.15),
    ``mean_span_length`` (3), ``decoder_start_id`` (pad); infill: ``noise_density`` (0.3),
    ``poisson_lambda`` (3), ``decoder_start_id`` (pad); plm: ``plm_k`` (6, :mod:`lmforge.data.permutation`).
    """
    spec = get_objective(objective)
    unknown = sorted(set(options) - set(spec.sampler_options))
    if unknown:
        known = ", ".join(spec.sampler_options) or "none"
        raise ConfigError(f"{unknown[0]}: not an option of objective {objective!r} (options: {known})")
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset, tokenizer)
    elif tokenizer is not None and tokenizer.fingerprint != dataset.tokenizer.fingerprint:
        raise DataError(
            f"{dataset.path}: prepared with tokenizer {dataset.tokenizer.fingerprint}, "
            f"not the given {tokenizer.fingerprint}; re-run lmforge prepare with this tokenizer"
        )
    tokens = dataset.split(split)
    tokenizer = dataset.tokenizer if tokenizer is None else tokenizer
    return spec.sampler(
        tokens,
        dataset.offsets[split],
        tokenizer,
        batch_size,
        seq_len,
        seed=seed,
        rank=rank,
        world_size=world_size,
        order=order,
        **options,
    )
