"""``lmforge score``: log P(x), perplexity and bits per byte of texts (decoder, sliding window),
pseudo-log-likelihood (encoder) or log P(target | source) (encoder-decoder); JSONL or CSV out."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from lmforge.cli.common import add_device_arguments
from lmforge.errors import DataError, LMForgeError
from lmforge.infer.prompts import START_CHOICES
from lmforge.text import jsonl_records

COMMAND = "score"
HELP = "score texts: log P, perplexity, bits per byte (sliding window); MLM pseudo-log-likelihood; log P(y|x)"

CSV_FIELDS = ["id", "kind", "n_tokens", "logprob", "nll", "perplexity", "n_bytes", "bits_per_byte"]


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory (lmforge, or HF with a tokenizer.json)")
    src = p.add_argument_group("input (one kind)")
    src.add_argument(
        "--text",
        action="append",
        default=[],
        help="a text to score (repeatable); for an encoder-decoder the source, with --target",
    )
    src.add_argument("--target", action="append", default=[], help="encoder-decoder: the target of each --text")
    src.add_argument("--file", action="append", default=[], help="a UTF-8 text file, scored as one text (repeatable)")
    src.add_argument("--jsonl", help="a JSONL file, one text per line in --field")
    src.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    src.add_argument("--source-field", default="source", help="encoder-decoder JSONL: source field (default: source)")
    src.add_argument("--target-field", default="target", help="encoder-decoder JSONL: target field (default: target)")
    p.add_argument("--window", type=int, help="decoder: tokens per window (default: the model's context)")
    p.add_argument("--stride", type=int, help="decoder: new tokens per window after the first (default: window // 2)")
    p.add_argument("--batch-size", type=int, default=16, help="windows (or masked copies) per forward pass")
    p.add_argument(
        "--start",
        choices=START_CHOICES,
        default="auto",
        help="decoder: token put in front of each text so its first token is scored: auto (default: the "
        "token the model's texts followed in training, EOS for a model lmforge pretrained, else "
        "BOS when the tokenizer has one), bos, eos or none (the first token is then not scored)",
    )
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="output format (default jsonl)")
    p.add_argument("--output", "-o", help="write here instead of standard output")
    p.add_argument("--per-token", action="store_true", help="jsonl: add token ids, token strings and log-probs")
    add_device_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _read_inputs(args, arch: str) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    pairs = arch == "encoder-decoder"
    if args.text:
        if pairs:
            if len(args.target) != len(args.text):
                raise DataError("an encoder-decoder scores log P(target | source): give one --target per --text")
            items += [(f"text:{i}", (s, t)) for i, (s, t) in enumerate(zip(args.text, args.target))]
        else:
            items += [(f"text:{i}", t) for i, t in enumerate(args.text)]
    for f in args.file:
        path = Path(f)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if pairs:
            raise DataError(
                "an encoder-decoder needs (source, target) pairs: use --jsonl with --source-field / "
                "--target-field, or --text with --target"
            )
        try:
            items.append((str(path), path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if args.jsonl:
        path = Path(args.jsonl)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        for where, rec in jsonl_records(path):
            if pairs:
                for k in (args.source_field, args.target_field):
                    if not isinstance(rec.get(k), str):
                        raise DataError(f"{where}: no string field {k!r}; set --source-field / --target-field")
                items.append((where, (rec[args.source_field], rec[args.target_field])))
            else:
                if not isinstance(rec.get(args.field), str):
                    raise DataError(
                        f"{where}: no string field {args.field!r}; set --field "
                        f"(fields here: {', '.join(rec) or 'none'})"
                    )
                items.append((where, rec[args.field]))
    if not items:
        raise DataError("nothing to score: give --text, --file or --jsonl")
    return items


def run(args) -> int:
    from lmforge.infer import load_for_inference, score, summarize
    from lmforge.infer.prompts import resolve_start

    model, tok = load_for_inference(args.model, args.device, args.dtype)
    arch = model.config.arch
    items = _read_inputs(args, arch)
    if arch not in ("decoder", "xlnet") and (args.window or args.stride):
        raise LMForgeError(
            "--window / --stride apply to decoders and XLNet only (encoders and encoder-decoders score whole texts)"
        )
    start = resolve_start(args.start, tok, model)
    results = score(
        model,
        tok,
        [x for _, x in items],
        window=args.window,
        stride=args.stride,
        batch_size=args.batch_size,
        progress=False if args.no_progress else None,
        add_bos=start.add_bos,
        start_id=start.start_id,
    )
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        if args.format == "csv":
            w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for (name, _), r in zip(items, results):
                w.writerow({"id": name, **r.to_dict()})
        else:
            for (name, x), r in zip(items, results):
                d = {"id": name, **r.to_dict(per_token=args.per_token)}
                if not name.startswith("text:") and isinstance(x, str) and len(x) > 200:
                    d.pop("text", None)  # long texts from files: the id names them
                if args.per_token:
                    d["tokens"] = [tok.id_to_token(i) for i in r.token_ids]
                out.write(json.dumps(d, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    s = summarize(results)
    bpb = f", {s['bits_per_byte']:.4f} bits/byte" if s["bits_per_byte"] is not None else ""
    what = {
        "decoder": "perplexity",
        "xlnet": "left-to-right perplexity",
        "encoder": "pseudo-perplexity",
        "encoder-decoder": "perplexity of targets",
    }[arch]
    first = "" if start.first_scored else " (the first token of each text has no context and is not scored)"
    print(
        f"{s['texts']} texts, {s['n_tokens']} tokens scored{first}: {what} {s['perplexity']:.4f}, "
        f"{s['nll']:.4f} nats/token{bpb}",
        file=sys.stderr,
    )
    return 0
