"""Attention maps: the probabilities softmax(Q K^T / sqrt(d)) of one layer (one head, or all heads),
as a matrix and as a PNG heatmap with the tokens on the axes.

Row i of a map is query token i's distribution over the key tokens, so every row sums to 1 (for a
decoder the upper triangle is zero: a token attends to itself and the past only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LMForgeError
from lmforge.infer.prompts import encode_for_decoder, encode_for_encoder, encode_source
from lmforge.nn import eval_mode


@dataclass
class AttentionMap:
    matrix: np.ndarray  # (T, S) for one head, (H, T, S) for all heads of the layer
    query_tokens: list[str]  # row labels
    key_tokens: list[str]  # column labels
    layer: int
    head: int | None  # None: all heads
    kind: str = "self"  # "self", "encoder", "decoder" (self-attention) or "cross"

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "head": self.head,
            "kind": self.kind,
            "shape": list(self.matrix.shape),
            "query_tokens": self.query_tokens,
            "key_tokens": self.key_tokens,
        }


def _labels(tokenizer, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    f = getattr(tokenizer, "id_to_token", None)
    out = []
    for i in ids:
        t = f(i) if f is not None else None
        out.append(t if t is not None else tokenizer.decode([i]))
    return out


def _ids(tokenizer, x, encode) -> list[int]:
    if isinstance(x, str):
        if tokenizer is None:
            raise LMForgeError("give a tokenizer to map text to tokens, or pass token ids")
        return list(encode(x))
    return [int(i) for i in torch.as_tensor(x).reshape(-1).tolist()]


@torch.inference_mode()
def attention_map(
    model, tokenizer, text, layer: int = -1, head: int | None = None, target=None, kind: str | None = None
) -> AttentionMap:
    """The attention probabilities of ``layer`` (negative counts from the end) for ``text`` (a string,
    or token ids), one ``head`` or all heads.

    For an encoder-decoder ``text`` is the source; ``kind`` picks ``"encoder"`` self-attention
    (default without a ``target``), ``"decoder"`` self-attention or ``"cross"`` attention (default
    with a ``target``: decoder tokens over source tokens).
    """
    arch = getattr(getattr(model, "config", None), "arch", None)
    if arch is None:
        raise LMForgeError("attention maps need an lmforge model")
    device = next(model.parameters()).device
    with eval_mode(model):
        if arch == "decoder":
            ids = _ids(tokenizer, text, lambda t: encode_for_decoder(tokenizer, t, model=model))
            x = torch.tensor([ids], device=device)
            _check_len(model, len(ids))
            atts = model(x, output_attentions=True).attentions
            q_ids = k_ids = ids
            kind = "self"
        elif arch == "encoder":
            ids = _ids(tokenizer, text, lambda t: encode_for_encoder(tokenizer, t, model))
            _check_len(model, len(ids))
            atts = model(torch.tensor([ids], device=device), output_attentions=True).attentions
            q_ids = k_ids = ids
            kind = "self"
        else:
            src = _ids(tokenizer, text, lambda t: encode_source(tokenizer, t, model))
            kind = kind or ("cross" if target is not None else "encoder")
            if kind not in ("encoder", "decoder", "cross"):
                raise LMForgeError(f"kind must be encoder, decoder or cross, got {kind!r}")
            _check_len(model, len(src))
            if kind == "encoder":
                atts = model.encode(torch.tensor([src], device=device), output_attentions=True).attentions
                q_ids = k_ids = src
            else:
                if target is None:
                    raise LMForgeError(f"{kind} attention of an encoder-decoder needs a target text")
                tgt = _ids(tokenizer, target, tokenizer.encode if tokenizer is not None else None)
                dec_in = model.shift_right(torch.tensor([tgt + [0]], device=device))  # start + target
                _check_len(model, dec_in.shape[1])
                out = model(
                    input_ids=torch.tensor([src], device=device), decoder_input_ids=dec_in, output_attentions=True
                )
                dec_ids = dec_in[0].tolist()
                atts = out.cross_attentions if kind == "cross" else out.attentions
                q_ids, k_ids = dec_ids, (src if kind == "cross" else dec_ids)
    n_layer = len(atts)
    if not -n_layer <= layer < n_layer:
        raise LMForgeError(
            f"layer {layer} out of range: the model has {n_layer} layers (0..{n_layer - 1}, or -1 for the last)"
        )
    layer = layer % n_layer
    a = atts[layer][0].float().cpu()  # (H, T, S)
    if head is not None:
        if not -a.shape[0] <= head < a.shape[0]:
            raise LMForgeError(f"head {head} out of range: layer {layer} has {a.shape[0]} heads")
        head = head % a.shape[0]
        a = a[head]
    return AttentionMap(a.numpy(), _labels(tokenizer, q_ids), _labels(tokenizer, k_ids), layer, head, kind)


def _check_len(model, n: int) -> None:
    cfg = model.config
    if cfg.positions != "none" and n > cfg.max_positions:
        raise LMForgeError(
            f"{n} tokens exceed the model's context max_positions={cfg.max_positions}; use a shorter text"
        )
    if n == 0:
        raise LMForgeError("empty text: nothing to attend to")


def _short(t: str, n: int = 12) -> str:
    t = t.replace("\n", "\\n").replace("Ġ", "_").replace("▁", "_")
    return t if len(t) <= n else t[: n - 1] + "…"


def plot_attention(amap: AttentionMap, path: str | Path, cmap: str = "viridis", max_labels: int = 64) -> Path:
    """Write ``amap`` as a PNG heatmap (one panel, or a grid with one panel per head)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = amap.matrix
    panels = [m] if m.ndim == 2 else list(m)
    titles = [f"layer {amap.layer}, head {amap.head}"] if m.ndim == 2 else [f"head {h}" for h in range(len(panels))]
    T, S = panels[0].shape
    cols = 1 if len(panels) == 1 else math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / cols)
    size = min(max(4.0, 0.22 * max(T, S) + 2), 14.0)
    fig = Figure(figsize=(size * cols, size * rows), dpi=80 if len(panels) > 4 else 100)
    FigureCanvasAgg(fig)
    show_q = T <= max_labels
    show_k = S <= max_labels
    for k, (p, title) in enumerate(zip(panels, titles)):
        ax = fig.add_subplot(rows, cols, k + 1)
        im = ax.imshow(p, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=10)
        if show_k:
            ax.set_xticks(range(S))
            ax.set_xticklabels([_short(t) for t in amap.key_tokens], rotation=90, fontsize=7)
        if show_q:
            ax.set_yticks(range(T))
            ax.set_yticklabels([_short(t) for t in amap.query_tokens], fontsize=7)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        if len(panels) == 1:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if len(panels) > 1:
        fig.suptitle(f"{amap.kind} attention, layer {amap.layer}, all {len(panels)} heads")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def save_attention(amap: AttentionMap, png_path: str | Path, cmap: str = "viridis") -> tuple[Path, Path, Path]:
    """Write the PNG, the matrix beside it (``.npy``) and the tokens / layer / head (``.json``)."""
    png = plot_attention(amap, png_path, cmap)
    npy = png.with_suffix(".npy")
    np.save(npy, amap.matrix)
    meta = png.with_suffix(".json")
    meta.write_text(json.dumps(amap.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return png, npy, meta


__all__ = ["AttentionMap", "attention_map", "plot_attention", "save_attention"]
