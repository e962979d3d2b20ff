"""lmforge: build, pretrain, fine-tune, score and sample Transformer language models, and plan the budget."""

__version__ = "0.1.0"

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError, DataError, LMForgeError, TrainingError
