"""``lmforge attention``: an attention map (one head, or all heads of a layer) as a PNG heatmap."""

from __future__ import annotations

from lmforge.cli.common import add_device_arguments

COMMAND = "attention"
HELP = "attention probabilities of a layer / head as a PNG heatmap (+ .npy matrix, .json tokens)"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory (lmforge, or HF with a tokenizer.json)")
    p.add_argument("--text", required=True, help="the text (an encoder-decoder's source)")
    p.add_argument("--target", help="encoder-decoder: the target text (for decoder / cross attention)")
    p.add_argument(
        "--kind",
        choices=["encoder", "decoder", "cross"],
        help="encoder-decoder: which attention (default: cross with --target, else encoder)",
    )
    p.add_argument("--layer", type=int, default=-1, help="layer index, negative from the end (default -1: the last)")
    p.add_argument("--head", type=int, help="one head (default: all heads of the layer, as a grid)")
    p.add_argument("--out", default="attention.png", help="PNG to write; the matrix goes beside it as .npy")
    p.add_argument("--cmap", default="viridis", help="matplotlib colour map")
    add_device_arguments(p, dtype=False)


def run(args) -> int:
    from lmforge.infer import attention_map, load_for_inference, save_attention

    model, tok = load_for_inference(args.model, args.device)
    amap = attention_map(model, tok, args.text, layer=args.layer, head=args.head, target=args.target, kind=args.kind)
    png, npy, meta = save_attention(amap, args.out, cmap=args.cmap)
    what = f"head {amap.head}" if amap.head is not None else f"all {amap.matrix.shape[0]} heads"
    print(
        f"wrote {png} ({amap.kind} attention, layer {amap.layer}, {what}, {len(amap.query_tokens)} x "
        f"{len(amap.key_tokens)} tokens); matrix {npy}, tokens {meta}"
    )
    return 0
