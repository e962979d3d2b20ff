"""Text on the ground floor: cleaning, UTF-8 checks and reading files, with one-line errors.

Everything above reads text through here: the tokenizer (training texts, ``encode``'s surrogate
policy), the data layer (corpus files, JSONL records, byte counts for bits per byte) and the CLI.
It imports nothing of lmforge but its errors, so neither the tokenizer nor the data layer needs
the other to read a file.

Two error policies (:data:`ERRORS`): ``"strict"`` refuses text that is not valid Unicode / UTF-8
with a :class:`~lmforge.errors.DataError` naming the place; ``"replace"`` turns each bad
character into U+FFFD (with a warning when a file's bytes are not UTF-8).
"""

from __future__ import annotations

import codecs
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import ConfigError, DataError

ERRORS = ("strict", "replace")
SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: Python strings may hold them, UTF-8 cannot


def check_errors(errors: str) -> None:
    """Validate an ``errors=`` policy argument."""
    if errors not in ERRORS:
        raise ConfigError(f"errors: {errors!r} is not one of {', '.join(ERRORS)}")


def clean_text(text: str, errors: str = "strict", where: str = "text") -> str:
    """``text`` as valid Unicode: a lone surrogate raises :class:`DataError` or becomes U+FFFD."""
    m = SURROGATE.search(text)
    if m is None:
        return text
    if errors == "replace":
        return SURROGATE.sub("\ufffd", text)
    raise DataError(
        f"{where}: lone surrogate U+{ord(m.group()):04X} at character {m.start()} is not valid Unicode "
        f"(it has no UTF-8 encoding); pass errors='replace' to replace it with U+FFFD"
    )


def utf8_len(text: str) -> int:
    """Number of UTF-8 bytes of ``text``: the denominator of bits per byte."""
    return len(text.encode("utf-8", "replace"))


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR line ends as LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """The text of a UTF-8 file, with a byte-order mark dropped and line ends normalised to LF.

    Refuses a missing, empty or binary (NUL bytes) file; invalid UTF-8 fails with its byte offset
    (``errors="strict"``) or becomes U+FFFD with a warning (``errors="replace"``).
    """
    check_errors(errors)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a text file")
    data = p.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{p}: UTF-16 text (byte-order mark); convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    skipped = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[skipped:]
    if not data.strip():
        raise DataError(f"{p}: empty file (no text)")
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{p}: binary file (NUL byte at byte offset {nul + skipped}); lmforge reads UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors == "strict":
            raise DataError(
                f"{p}: invalid UTF-8 at byte offset {e.start + skipped} ({e.reason}); fix the file "
                f"or pass errors='replace' (--encoding-errors replace) to read it as U+FFFD"
            ) from None
        text = data.decode("utf-8", "replace")
        warnings.warn(f"{p}: invalid UTF-8 from byte offset {e.start + skipped} read as U+FFFD", stacklevel=2)
    return normalize_newlines(text)


def jsonl_records(path: str | os.PathLike, errors: str = "strict") -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for each non-blank line of a JSONL file (``where`` is ``path:line``);
    a line that is not a JSON object is refused with its line number."""
    p = Path(path)
    for n, line in enumerate(read_text(p, errors).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
        yield where, record
