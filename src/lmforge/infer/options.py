"""The numeric options of generation, checked in one place for Python, the CLI and any server.

:class:`SamplingOptions` is a frozen, validated config: :func:`~lmforge.infer.generate` takes one
(``options=``) or builds one from its keyword arguments before any work, as
:func:`~lmforge.infer.generate_ids` does; ``lmforge generate`` builds one from its flags
(:func:`lmforge.cli.common.sampling_options`) before it loads a model or prints a prompt. A bad
value is a :class:`~lmforge.errors.ConfigError` naming the option. A server request
(:class:`lmforge.serve.SamplingParams`) holds one too, beside what only a request has (OpenAI's
``max_tokens``, which may be 0 to score the prompt, stop strings, log-probabilities), and draws
through the same chooser (:meth:`~lmforge.infer.sampling.TokenChooser.from_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from lmforge.config import INT_LIMIT, ConfigBase
from lmforge.errors import ConfigError


@dataclass(frozen=True)
class SamplingOptions(ConfigBase):
    """``temperature=0`` is greedy; ``top_k`` None or 0 and ``top_p`` None or 1 turn the filters off."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    batch_size: int | None = None

    def validate(self) -> None:
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 keeps every token), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty: must be > 0 (1 is none), got {self.repetition_penalty}")
        if self.seed is not None and not 0 <= self.seed < INT_LIMIT:
            raise ConfigError(f"seed: must be in [0, 2**63), got {self.seed}")

    def check_model(self, vocab_size: int) -> None:
        """Limits that depend on the model: more beams than tokens cannot all differ."""
        if self.num_beams > vocab_size:
            raise ConfigError(f"num_beams: {self.num_beams} is more than the model's vocabulary ({vocab_size})")


def options_from(arguments: dict[str, Any]) -> SamplingOptions:
    """The options among a caller's keyword arguments (``locals()`` of ``generate`` /
    ``generate_ids``, whose parameters carry the fields' names), validated."""
    return SamplingOptions(**{f.name: arguments[f.name] for f in fields(SamplingOptions) if f.name in arguments})
