"""Model directories as the library reads them: the weights and the tokenizer beside them.

:func:`load_model` is :func:`lmforge.models.load_model` (config + weights, checked tensor by
tensor) plus the check that a ``tokenizer.json`` in the directory fits the model's embedding. It
sits above both the model files and the tokenizer so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.models import io
from lmforge.tokenizer import Tokenizer, check_compatible


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    with_extra: bool = False,
):
    """The model of an lmforge model directory; a ``tokenizer.json`` beside it must fit its embedding."""
    loaded = io.load_model(directory, device=device, dtype=dtype, with_extra=with_extra)
    model = loaded[0] if with_extra else loaded
    check_tokenizer(directory, model.config.vocab_size)
    return loaded


def check_tokenizer(directory: str | Path, vocab_size: int) -> Tokenizer | None:
    """The directory's tokenizer (None when it has none), refused when it does not fit ``vocab_size`` rows."""
    path = Path(directory) / io.TOKENIZER_FILE
    if not path.is_file():
        return None
    tokenizer = Tokenizer.load(path)
    check_compatible(tokenizer, vocab_size, str(path))
    return tokenizer
