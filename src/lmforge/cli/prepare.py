"""``lmforge prepare``: a corpus -> a tokenized dataset directory (memmap shards + meta.json)."""

from __future__ import annotations

import json
import time

from lmforge.cli.common import add_encoding_errors_argument
from lmforge.data.shards import prepare
from lmforge.tokenizer import KINDS

COMMAND = "prepare"
HELP = "tokenize text files / JSONL / the bundled corpus into memmap shards"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        metavar="SOURCE",
        help="'shakespeare' (bundled, standard split), text files, folders, globs or JSONL files",
    )
    parser.add_argument(
        "--tokenizer",
        default="char",
        metavar="KIND|PATH",
        help=f"a kind to train on the train split ({', '.join(KINDS)}; default char) "
        "or a tokenizer.json / folder holding one",
    )
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary size when training (default 8192)")
    parser.add_argument(
        "--sentinels",
        type=int,
        default=None,
        help="sentinel tokens when training (for span corruption; default 100 for unigram)",
    )
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of documents held out for validation, for sources other than shakespeare (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation choice (default 0)")
    add_encoding_errors_argument(parser)
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print meta.json's summary as JSON")


def run(args) -> int:
    start = time.perf_counter()
    ds = prepare(
        args.corpus,
        args.out,
        args.tokenizer,
        vocab_size=args.vocab_size,
        sentinels=args.sentinels,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        seed=args.seed,
        errors=args.encoding_errors,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    splits = {s: {k: v for k, v in info.items() if k != "names"} for s, info in ds.meta["splits"].items()}
    total_bytes = sum(info["bytes"] for info in splits.values())
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(ds.path),
                    "tokenizer": ds.meta["tokenizer"],
                    "dtype": ds.meta["dtype"],
                    "splits": splits,
                    "seconds": round(seconds, 3),
                }
            )
        )
        return 0
    tok = ds.tokenizer
    print(f"{ds.path}: {tok.kind} tokenizer, {tok.vocab_size} tokens ({tok.fingerprint}), {ds.meta['dtype']}")
    for s, info in splits.items():
        print(f"  {s:5}  {info['tokens']:>12,} tokens  {info['documents']:>7,} documents  {info['bytes']:>13,} bytes")
    print(f"  {total_bytes / 1e6:.1f} MB in {seconds:.1f}s ({total_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return 0
