"""``lmforge fill-mask``: the most likely tokens for each [MASK] of a text (encoders), or the
missing spans of a text with ``<extra_id_N>`` sentinels (encoder-decoders pretrained on span corruption)."""

from __future__ import annotations

import json

from lmforge.cli.common import add_device_arguments
from lmforge.errors import ConfigError

COMMAND = "fill-mask"
HELP = "masked LM: top-k candidates for each [MASK]; encoder-decoder: fill the <extra_id_N> spans"


def add_arguments(p) -> None:
    p.add_argument("model", help="encoder model directory (lmforge, or HF with a tokenizer.json)")
    p.add_argument(
        "text",
        help='text with one or more masks, e.g. "Paris is the [MASK] of France" '
        '(encoder-decoder: "To be, <extra_id_0> to be")',
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="encoder-decoder: tokens to generate (default 32)")
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    p.add_argument("--mask-token", help="the mask spelling in the text (default: [MASK] or the tokenizer's own)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_device_arguments(p, dtype=False)


def run(args) -> int:
    from lmforge.infer import fill_mask, load_for_inference

    model, tok = load_for_inference(args.model, args.device)
    if model.config.arch == "encoder-decoder":
        return _fill_spans(model, tok, args)
    cands = fill_mask(model, tok, args.text, top_k=args.top_k, mask_token=args.mask_token)
    if args.json:
        print(json.dumps({"text": args.text, "masks": cands}, ensure_ascii=False))
        return 0
    for k, c in enumerate(cands):
        print(f"[MASK] {k}:" if len(cands) > 1 else "[MASK]:")
        for rank, cand in enumerate(c, 1):
            print(f"  {rank}. {cand['token']!r:20} {cand['prob']:.4f}")
    return 0


def _fill_spans(model, tok, args) -> int:
    from lmforge.infer.fill import fill_spans

    if args.max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens: must be positive, got {args.max_new_tokens}")
    filled = fill_spans(model, tok, args.text, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"text": args.text, "filled": filled.text, "spans": filled.spans}, ensure_ascii=False))
        return 0
    print(filled.text)
    for k, span in enumerate(filled.spans):
        print(f"  span {k}: {span!r}")
    return 0
