"""The data layer: corpora -> token shards -> objective batches.

docs = load_splits("shakespeare")                            # corpus.py: Document records, standard split
ds = prepare("shakespeare", "data/shakespeare-char", "char") # shards.py: dataset directory
ds = open_dataset("data/shakespeare-char")                   # memmaps + meta + tokenizer
batches = make_batches("causal", ds, batch_size=12, seq_len=64, seed=0)   # objectives.py: the registry
batch = batches.next_batch()                                 # {"input_ids": (B, T), "labels": (B, T)}
"""

from lmforge.data.corpus import (
    BUNDLED,
    GENRES,
    VALIDATION_PLAYS,
    Document,
    load_documents,
    load_splits,
    markdown_to_text,
    read_jsonl,
    read_text,
    shakespeare,
    split_documents,
)
from lmforge.data.masking import MLMSampler, NSPSampler, TokenMasker
from lmforge.data.objectives import OBJECTIVES, Objective, get_objective, make_batches
from lmforge.data.sampler import IGNORE_INDEX, CausalSampler, Sampler
from lmforge.data.shards import Dataset, open_dataset, prepare
from lmforge.data.spans import InfillSampler, SpanSampler

__all__ = [
    "BUNDLED",
    "GENRES",
    "VALIDATION_PLAYS",
    "Document",
    "load_documents",
    "load_splits",
    "markdown_to_text",
    "read_jsonl",
    "read_text",
    "shakespeare",
    "split_documents",
    "IGNORE_INDEX",
    "OBJECTIVES",
    "Objective",
    "get_objective",
    "CausalSampler",
    "InfillSampler",
    "MLMSampler",
    "NSPSampler",
    "Sampler",
    "SpanSampler",
    "TokenMasker",
    "make_batches",
    "Dataset",
    "open_dataset",
    "prepare",
]
