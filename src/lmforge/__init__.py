"""lmforge: build, pretrain, fine-tune, score and sample Transformer language models, and plan the budget."""

__version__ = "0.1.0"

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError, DataError, LMForgeError, TrainingError
from lmforge.interop.hf import from_hf, to_hf
from lmforge.modeldir import load_model
from lmforge.models import DecoderLM, EncoderDecoderLM, EncoderLM, build_model, count_parameters, save_model

_SUBMODULES = ("plan", "infer", "train", "finetune", "data", "tokenizer", "accounting", "bench", "serve")


_FUNCTIONS = {
    "score": "lmforge.infer",
    "generate": "lmforge.infer",
    "attention_map": "lmforge.infer",
    "fill_mask": "lmforge.infer",
    "load_tokenizer": "lmforge.tokenizer",
    "prepare": "lmforge.data",
    "open_dataset": "lmforge.data",
    "pretrain": "lmforge.jobs",
}


def __getattr__(name: str):
    # Heavier parts load on first use (``lf.plan.fit(...)``, ``lf.score(...)``), keeping ``import lmforge`` quick.
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"lmforge.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


__all__ = [
    "ModelConfig",
    "LMForgeError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "TrainingError",
    "DecoderLM",
    "EncoderLM",
    "EncoderDecoderLM",
    "build_model",
    "count_parameters",
    "load_model",
    "save_model",
    "from_hf",
    "to_hf",
]
