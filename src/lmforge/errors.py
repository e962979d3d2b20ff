"""One exception family for user errors.

Everything a user can get wrong (a config field, a missing file, a tokenizer that does not match
a checkpoint, ...) raises a subclass of :class:`LMForgeError` whose message says what is wrong and
how to fix it. The CLI prints ``error: <message>`` and exits with status 2.
"""


class LMForgeError(ValueError):
    """Base class of all user-facing errors (a ValueError, so generic handlers still work)."""


class ConfigError(LMForgeError):
    """An invalid configuration value; the message names the field and the fix."""


class DataError(LMForgeError):
    """Unreadable, empty, binary or malformed input data; the message names the file."""


class CheckpointError(LMForgeError):
    """A missing, corrupt or mismatched checkpoint / model directory."""


class TrainingError(LMForgeError):
    """A run that cannot go on (too many non-finite steps, out of memory, ...)."""
