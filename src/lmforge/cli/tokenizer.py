"""``lmforge tokenizer train | encode | decode | info``."""

from __future__ import annotations

import json
import re
import sys
import time

from lmforge.cli.common import add_encoding_errors_argument
from lmforge.data.corpus import load_splits
from lmforge.errors import ConfigError, DataError
from lmforge.text import read_text
from lmforge.tokenizer import KINDS, load_tokenizer, train_tokenizer

COMMAND = "tokenizer"
HELP = "train or inspect a tokenizer (byte-level BPE, WordPiece, Unigram, char)"


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a tokenizer and write tokenizer.json")
    train.add_argument("--kind", choices=KINDS, default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary size incl. special tokens (default 8192; ignored by char)",
    )
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="SOURCE",
        help="text files, folders, globs, JSONL files, or 'shakespeare' (its train split)",
    )
    train.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    train.add_argument(
        "--sentinels",
        type=int,
        default=None,
        help="add <extra_id_0..N-1> for span corruption (default: 100 for unigram, else 0)",
    )
    add_encoding_errors_argument(train, " in the input")
    train.add_argument("--out", required=True, help="output tokenizer.json (or a folder to write it into)")
    train.add_argument("--json", action="store_true", help="print the result as JSON")

    encode = actions.add_parser("encode", help="print the token ids of a text")
    _tokenizer_arg(encode)
    encode.add_argument("text", nargs="?", help="the text (default: --file or standard input)")
    encode.add_argument("--file", help="read the text from this file")
    encode.add_argument("--tokens", action="store_true", help="print the token strings instead of ids")
    encode.add_argument("--json", action="store_true", help="print a JSON list")

    decode = actions.add_parser("decode", help="print the text of token ids")
    _tokenizer_arg(decode)
    decode.add_argument("ids", nargs="*", help="token ids, space or comma separated (default: standard input)")
    decode.add_argument("--skip-special", action="store_true", help="leave special tokens out")

    info = actions.add_parser("info", help="kind, vocabulary size, special tokens and fingerprint")
    _tokenizer_arg(info)
    info.add_argument("--json", action="store_true", help="print JSON")


def _tokenizer_arg(parser) -> None:
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="PATH",
        help="tokenizer.json, or a model / dataset / HF model folder holding one",
    )


def run(args) -> int:
    return {"train": _train, "encode": _encode, "decode": _decode, "info": _info}[args.action](args)


def _train(args) -> int:
    texts = [d.text for d in load_splits(args.input, 0.0, args.text_field, args.encoding_errors)["train"]]
    start = time.perf_counter()
    tok = train_tokenizer(args.kind, texts, args.vocab_size, sentinels=args.sentinels)
    seconds = time.perf_counter() - start
    path = tok.save(args.out)
    if args.json:
        print(json.dumps({**tok.info(), "path": str(path), "seconds": round(seconds, 3)}))
    else:
        print(
            f"trained a {tok.kind} tokenizer of {tok.vocab_size} tokens in {seconds:.1f}s "
            f"(fingerprint {tok.fingerprint}) -> {path}"
        )
    return 0


def _encode(args) -> int:
    tok = load_tokenizer(args.tokenizer)
    if args.text is not None:
        text = args.text
    elif args.file:
        text = read_text(args.file)
    else:
        text = sys.stdin.read()
    ids = tok.encode(text)
    out = [tok.id_to_token(i) for i in ids] if args.tokens else ids
    print(json.dumps(out, ensure_ascii=False) if args.json else " ".join(map(str, out)))
    return 0


def _decode(args) -> int:
    tok = load_tokenizer(args.tokenizer)
    text = " ".join(args.ids) if args.ids else sys.stdin.read()
    if re.search(r"[^\d\s,\[\]]", text):
        raise ConfigError("ids: expected token ids separated by spaces or commas, e.g. 12 7 431")
    ids = [int(i) for i in re.findall(r"\d+", text)]
    bad = [i for i in ids if i >= tok.vocab_size]
    if bad:
        raise DataError(f"ids: {bad[0]} is outside the vocabulary [0, {tok.vocab_size}) of {args.tokenizer}")
    sys.stdout.write(tok.decode(ids, skip_special_tokens=args.skip_special) + "\n")
    return 0


def _info(args) -> int:
    info = load_tokenizer(args.tokenizer).info()
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"kind         {info['kind']}")
    print(f"vocab size   {info['vocab_size']}")
    print(f"fingerprint  {info['fingerprint']}")
    specials = ", ".join(f"{role}={tok!r} ({i})" for role, (tok, i) in info["special_tokens"].items())
    print(f"special      {specials or 'none'}")
    print(f"sentinels    {info['sentinels']}")
    return 0
