"""Token shards: a corpus tokenized once into a dataset directory, then memory-mapped for training.

A dataset directory holds::

    meta.json        format, sources, tokenizer (kind, fingerprint, vocab size), dtype, separator,
                     and per split: tokens, documents, UTF-8 bytes (for bits per byte), document names
    tokenizer.json   a copy of the tokenizer, so the dataset is self-describing
    train.bin        all training documents' token ids back to back, each followed by EOS (when
    val.bin          the tokenizer has one; else nothing: boundaries are in the .idx files only);
                     raw uint16 when the vocabulary fits (<= 65536 ids), else uint32
    train.idx.npy    int64 document offsets: document i is tokens [idx[i], idx[i+1]) (EOS included)
    val.idx.npy

:func:`prepare` writes it under a temporary name in the same folder and renames it when whole,
so an interrupted run leaves only a hidden ``.NAME.tmp-PID`` folder, never a complete-looking
dataset. The same inputs give byte-identical files (no timestamps). :func:`open_dataset`
refuses a directory whose files are missing or truncated, or that was made with another tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmforge.data.corpus import Document, load_splits
from lmforge.errors import DataError
from lmforge.text import utf8_len
from lmforge.tokenizer import KINDS, TOKENIZER_FILE, Tokenizer, train_tokenizer

FORMAT = "lmforge-dataset"
VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
MAX_LISTED_NAMES = 10_000  # meta.json lists document names up to this many per split
_BATCH_BYTES = 8 << 20  # text per encode_batch call: big enough to keep every core busy


class Dataset:
    """An opened dataset directory: ``train`` / ``val`` token memmaps, document offsets, meta, tokenizer."""

    def __init__(
        self,
        path: Path,
        meta: dict,
        tokenizer: Tokenizer,
        tokens: dict[str, np.ndarray],
        offsets: dict[str, np.ndarray],
    ):
        self.path = path
        self.meta = meta
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.offsets = offsets

    @property
    def train(self) -> np.ndarray:
        return self.tokens["train"]

    @property
    def val(self) -> np.ndarray:
        return self.tokens["val"]

    @property
    def separator_id(self) -> int | None:
        """The token after every document (EOS), or None when documents are simply concatenated."""
        sep = self.meta["separator"]
        return None if sep is None else sep["id"]

    def split(self, name: str) -> np.ndarray:
        if name not in self.tokens:
            raise DataError(f"{self.path}: no split {name!r}; splits are {', '.join(self.tokens)}")
        return self.tokens[name]

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split's text (separators excluded): bits/byte = nats * tokens / (bytes * ln 2)."""
        return self.meta["splits"][split]["bytes"]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(t):,} tokens" for s, t in self.tokens.items())
        return f"Dataset({str(self.path)!r}, {counts}, tokenizer={self.tokenizer.kind}:{self.tokenizer.fingerprint})"


def prepare(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    tokenizer: Tokenizer | str | os.PathLike = "char",
    *,
    vocab_size: int | None = None,
    sentinels: int | None = None,
    text_field: str = "text",
    val_fraction: float = 0.1,
    seed: int = 0,
    errors: str = "strict",
    overwrite: bool = False,
    progress: bool = True,
) -> Dataset:
    """Tokenize ``sources`` into the dataset directory ``out`` and open it.

    ``tokenizer`` is a :class:`Tokenizer`, a path (``tokenizer.json`` or a directory holding one),
    or a kind (bpe | wordpiece | unigram | char) to train on the *train* split only, with
    ``vocab_size`` and ``sentinels``. ``"shakespeare"`` uses the standard split; other sources hold
    out ``val_fraction`` of their documents (see :func:`~lmforge.data.corpus.split_documents`).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    if out.exists():
        _check_replaceable(out)
    source_list = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    splits = load_splits(source_list, val_fraction, text_field, errors, seed)
    if not splits["train"]:
        raise DataError(f"{', '.join(source_list)}: no training documents")
    tok = _resolve_tokenizer(tokenizer, splits["train"], vocab_size, sentinels, errors)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        doc_bytes = {s: [utf8_len(d.text) for d in docs] for s, docs in splits.items()}
        split_meta = {}
        with tqdm(
            total=sum(map(sum, doc_bytes.values())),
            unit="B",
            unit_scale=True,
            desc="tokenizing",
            disable=not progress,
            leave=False,
        ) as bar:
            for s in SPLITS:
                offsets = _write_tokens(tmp / f"{s}.bin", splits[s], doc_bytes[s], tok, dtype, errors, bar)
                np.save(tmp / f"{s}.idx.npy", offsets, allow_pickle=False)
                names = [d.name for d in splits[s]]
                split_meta[s] = {
                    "tokens": int(offsets[-1]),
                    "documents": len(names),
                    "bytes": sum(doc_bytes[s]),
                    "names": names if len(names) <= MAX_LISTED_NAMES else None,
                }
        tok.save(tmp / TOKENIZER_FILE)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "sources": source_list,
            "val_fraction": val_fraction,
            "seed": seed,
            "tokenizer": {
                "kind": tok.kind,
                "fingerprint": tok.fingerprint,
                "vocab_size": tok.vocab_size,
                "file": TOKENIZER_FILE,
            },
            "dtype": dtype.name,
            "separator": None if tok.eos_id is None else {"token": tok.id_to_token(tok.eos_id), "id": tok.eos_id},
            "splits": split_meta,
        }
        (tmp / META_FILE).write_text(
            json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )  # written last: its presence means "complete"
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_dataset(out)


def _resolve_tokenizer(
    spec: Tokenizer | str | os.PathLike,
    train: Sequence[Document],
    vocab_size: int | None,
    sentinels: int | None,
    errors: str,
) -> Tokenizer:
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, str) and spec in KINDS:
        return train_tokenizer(spec, (d.text for d in train), vocab_size, sentinels=sentinels, errors=errors)
    if not Path(spec).exists():
        raise DataError(f"{spec}: no such tokenizer file or folder (or give a kind: {', '.join(KINDS)})")
    return Tokenizer.load(spec)


def _batches(docs: Sequence[Document], sizes: Sequence[int]) -> Iterator[tuple[list[str], int]]:
    """Documents grouped into about ``_BATCH_BYTES`` of text: (texts, bytes)."""
    texts, total = [], 0
    for doc, size in zip(docs, sizes):
        texts.append(doc.text)
        total += size
        if total >= _BATCH_BYTES:
            yield texts, total
            texts, total = [], 0
    if texts:
        yield texts, total


def _write_tokens(
    path: Path, docs: Sequence[Document], sizes: Sequence[int], tok: Tokenizer, dtype: np.dtype, errors: str, bar: tqdm
) -> np.ndarray:
    """Write the documents' ids (each followed by EOS if any) to ``path``; return document offsets."""
    sep = np.array([] if tok.eos_id is None else [tok.eos_id], dtype=dtype)
    lengths = []
    with open(path, "wb") as f:
        for texts, nbytes in _batches(docs, sizes):
            for ids in tok.encode_arrays(texts, errors=errors):
                np.concatenate([ids.astype(dtype), sep]).tofile(f)
                lengths.append(len(ids) + len(sep))
            bar.update(nbytes)
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _check_replaceable(out: Path) -> None:
    """Only an lmforge dataset (or an empty folder) may be overwritten: never someone's other files."""
    if out.is_dir() and (not any(out.iterdir()) or (out / META_FILE).is_file()):
        return
    raise DataError(f"{out}: exists and is not an lmforge dataset directory; refusing to replace it")


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an old dataset only once the new one is whole."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def open_dataset(path: str | os.PathLike, tokenizer: Tokenizer | str | os.PathLike | None = None) -> Dataset:
    """Open a dataset directory written by :func:`prepare`, checking it is whole.

    With ``tokenizer`` (object or path), refuse the dataset unless it was made with that tokenizer.
    """
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: no such dataset directory; create it with lmforge prepare")
    meta_path = p / META_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{p}: not a complete dataset (no {META_FILE}; an interrupted prepare?); re-run lmforge prepare"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: unreadable ({e}); re-run lmforge prepare") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{meta_path}: not an lmforge dataset of format version {VERSION}; re-run lmforge prepare")

    own = Tokenizer.load(p / TOKENIZER_FILE) if (p / TOKENIZER_FILE).is_file() else None
    recorded = meta["tokenizer"]["fingerprint"]
    if own is None or own.fingerprint != recorded:
        raise DataError(
            f"{p / TOKENIZER_FILE}: missing or changed since the dataset was prepared "
            f"(expected fingerprint {recorded}); re-run lmforge prepare"
        )
    if tokenizer is not None:
        given = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
        if given.fingerprint != recorded:
            raise DataError(
                f"{p}: prepared with another tokenizer ({meta['tokenizer']['kind']}, {own.vocab_size} tokens, "
                f"fingerprint {recorded}) than the one given ({given.kind}, {given.vocab_size} tokens, "
                f"fingerprint {given.fingerprint}); re-run lmforge prepare with this tokenizer"
            )

    dtype = np.dtype(meta["dtype"])
    tokens, offsets = {}, {}
    for s, info in meta["splits"].items():
        tokens[s] = _open_tokens(p / f"{s}.bin", dtype, info["tokens"])
        offsets[s] = _open_offsets(p / f"{s}.idx.npy", info["documents"], info["tokens"])
    return Dataset(p, meta, own, tokens, offsets)


def _open_tokens(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    expected = n * dtype.itemsize
    size = path.stat().st_size if path.is_file() else None
    if size != expected:
        found = "missing" if size is None else f"{size} bytes"
        raise DataError(
            f"{path}: {found}, but meta.json says {n} tokens ({expected} bytes); "
            f"the file is truncated or from another run; re-run lmforge prepare"
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


def _open_offsets(path: Path, documents: int, n: int) -> np.ndarray:
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise DataError(f"{path}: unreadable document offsets ({reason}); re-run lmforge prepare") from None
    if idx.dtype != np.int64 or idx.shape != (documents + 1,) or idx[0] != 0 or idx[-1] != n:
        raise DataError(
            f"{path}: document offsets do not match meta.json ({documents} documents, {n} tokens); "
            f"re-run lmforge prepare"
        )
    return idx
