"""Scoring: how likely is a text under a model?

- Decoder (causal LM), by the chain rule: log P(x) = sum_t log P(x_t | x_<t). Perplexity is
  exp(-log P / n_tokens) and bits per byte is -log P / (ln 2 * UTF-8 bytes of the text).
  **First token**: when the tokenizer has a BOS token it is put in front of the text, so every real
  token is scored; otherwise the first token has no context and is *not* scored (``n_tokens`` says
  how many were). Texts longer than the window are scored with a sliding window so every token is
  scored exactly once (see :func:`plan_windows`).
- XLNet: the same chain rule along a factorisation order (:func:`order_score`); its natural
  left-to-right order gives the causal score, windowed and started like a decoder's, so the two
  compare in bits per byte.
- Encoder (masked LM): pseudo-log-likelihood PLL(x) = sum_i log P(x_i | x_\\i), each position
  masked in turn (special tokens are not scored); pseudo-perplexity exp(-PLL / n).
- Encoder-decoder: log P(y | x) = sum_t log P(y_t | y_<t, x) for (source, target) pairs; the
  target ends with EOS when the model has one (``add_eos``).

Only the positions being scored go through the output layer, in chunks: log-probabilities are
``logit[target] - logsumexp(logits)`` per chunk, never a full (tokens x vocabulary) log-softmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import closing

import torch

from lmforge.errors import LMForgeError
from lmforge.infer.prompts import encode_for_decoder, encode_for_encoder, encode_source, model_arch
from lmforge.infer.results import ScoreResult
from lmforge.models.xlnet import order_logprobs
from lmforge.nn import eval_mode
from lmforge.tokenizer import special_id

# ----------------------------------------------------------------------------------------------
# Helpers


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _as_tensor(seq) -> torch.Tensor:
    if isinstance(seq, torch.Tensor):
        return seq.detach().reshape(-1).to("cpu", torch.long)
    return torch.as_tensor(list(seq), dtype=torch.long)


def _as_tensors(sequences) -> list[torch.Tensor]:
    """Each sequence as a 1-D CPU tensor; a (N, T) tensor on a GPU is copied to the host once, not
    row by row (32 rows: 32 device syncs, a millisecond of a GPU's scoring call)."""
    if isinstance(sequences, torch.Tensor):
        sequences = sequences.detach().to("cpu", torch.long)
    return [_as_tensor(s) for s in sequences]


def _chunk_rows(vocab: int, device: torch.device | None = None) -> int:
    """Rows of logits per chunk: about 16 MB of fp32 on a CPU (they stay in cache); on a GPU up to
    1 GB (few kernel launches), within 1/16 of the free memory (about three fp32 copies live at once)."""
    elements = 1 << 22
    if device is not None and device.type == "cuda":
        elements = min(1 << 28, torch.cuda.mem_get_info(device)[0] // 16)
    return max(64, elements // max(vocab, 1))


def head_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head, chunk: int | None = None) -> torch.Tensor:
    """log P(target) for (M, C) hidden states through the output layer ``head``, in chunks of rows:
    ``logit[target] - logsumexp(logits)``, computed in fp32."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    if hidden.shape[0] == 0:
        return out
    chunk = chunk or _chunk_rows(getattr(head, "out_features", 32768), hidden.device)
    for i in range(0, hidden.shape[0], chunk):
        logits = head(hidden[i : i + chunk]).float()
        t = targets[i : i + chunk, None]
        out[i : i + chunk] = logits.gather(1, t).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return out


def logits_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """log P(target) from (M, V) logits, in chunks."""
    out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    chunk = chunk or _chunk_rows(logits.shape[-1], logits.device)
    for i in range(0, logits.shape[0], chunk):
        lg = logits[i : i + chunk].float()
        out[i : i + chunk] = lg.gather(1, targets[i : i + chunk, None]).squeeze(1) - torch.logsumexp(lg, dim=-1)
    return out


def _progress(total: int, progress: bool | None, desc: str):
    from tqdm.auto import tqdm

    show = progress if progress is not None else total >= 20_000
    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not show, leave=False)


# ----------------------------------------------------------------------------------------------
# Decoder: the chain rule with a sliding window


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, first_target)`` over a sequence of ``n`` tokens.

    Token t (1 <= t < n) is predicted from tokens [begin, t) of the one window whose targets
    [first_target, end) contain it, so each is scored exactly once. The first window is
    [0, window) and scores tokens 1 .. window-1; each next window ends ``stride`` tokens later and
    starts ``window`` tokens before its end, so its new tokens see at least ``window - stride``
    tokens of context (the last one a full window). This is the HF perplexity recipe anchored at the
    window ends, with ``stride < window`` so that no token falls between windows.
    """
    if n < 2:
        return []
    if stride < 1 or stride >= window:
        raise LMForgeError(f"stride must be in [1, window), got stride={stride} with window={window}")
    end = min(window, n)
    out = [(0, end, 1)]
    while end < n:
        new_end = min(end + stride, n)
        out.append((max(0, new_end - window), new_end, end))
        end = new_end
    return out


def _resolve_window(model, window: int | None, stride: int | None, longest: int) -> tuple[int, int]:
    cfg = model.config
    limit = cfg.max_positions if cfg.positions != "none" else None
    if window is None:
        window = limit if limit is not None else max(longest, 2)
    if window < 2:
        raise LMForgeError(f"window must be at least 2 tokens, got {window}")
    if limit is not None and window > limit:
        raise LMForgeError(
            f"window={window} exceeds the model's context max_positions={limit}; use --window {limit} or less"
        )
    if stride is None:
        stride = max(1, window // 2)
    if not 1 <= stride < window:
        raise LMForgeError(f"stride must be in [1, window), got stride={stride} with window={window}")
    return window, stride


def _decoder_parts(model):
    """(body, head) when the model exposes them (hidden states, then the output layer on the rows
    that are scored); (None, None) for a generic model (its full logits are used)."""
    body, head = getattr(model, "transformer", None), getattr(model, "lm_head", None)
    if body is not None and head is not None:
        return body, head
    return None, None


@torch.inference_mode()
def decoder_token_logprobs(
    model,
    sequences: Sequence,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[torch.Tensor]:
    """Per-token log P for each token sequence under a decoder: for a sequence of n tokens, a float
    tensor of n - 1 values, log P(x_t | x_<t) for t = 1 .. n-1 (the first token is context only).

    Windows (:func:`plan_windows`) of all sequences are batched ``batch_size`` at a time, longest
    first, right-padded (harmless under causal attention, so no mask is needed).
    """
    seqs = _as_tensors(sequences)
    if not seqs:
        return []
    window, stride = _resolve_window(model, window, stride, max(len(s) for s in seqs))
    items = [(i, b, e, f) for i, s in enumerate(seqs) for (b, e, f) in plan_windows(len(s), window, stride)]
    items.sort(key=lambda it: -(it[2] - it[1]))  # longest window first
    results = [torch.empty(max(len(s) - 1, 0), dtype=torch.float32) for s in seqs]
    device = _device(model)
    body, head = _decoder_parts(model)
    xlnet = getattr(model.config, "arch", None) == "xlnet"  # left to right: right padding stays unseen
    with eval_mode(model), closing(_progress(sum(e - f for _, _, e, f in items), progress, "scoring")) as bar:
        for k in range(0, len(items), batch_size):
            batch = items[k : k + batch_size]
            L = max(e - b for _, b, e, _ in batch)
            ids = torch.zeros(len(batch), L, dtype=torch.long)
            for r, (i, b, e, _) in enumerate(batch):
                ids[r, : e - b] = seqs[i][b:e]
            # column c predicts token c + 1; a window scores its columns f-1-b .. e-2-b (one mask, no
            # per-token index lists: the bookkeeping stays small next to a GPU's forward)
            col = torch.arange(L - 1)
            first = torch.tensor([f - 1 - b for _, b, _, f in batch])
            end = torch.tensor([e - 1 - b for _, b, e, _ in batch])
            scored = ((col >= first[:, None]) & (col < end[:, None])).to(device)  # (R, L-1)
            ids = ids.to(device)
            tgt = ids[:, 1:][scored]
            if xlnet:
                lp = order_logprobs(model, ids)[scored]
            elif body is not None:
                lp = head_logprobs(body(ids).last_hidden_state[:, :-1][scored], tgt, head)
            else:
                lp = logits_logprobs(model(ids).logits[:, :-1][scored], tgt)
            sizes = [e - f for _, _, e, f in batch]
            for (i, _, e, f), part in zip(batch, lp.cpu().split(sizes)):  # row-major: row by row, in order
                results[i][f - 1 : e - 1] = part
            bar.update(sum(sizes))
    return results


def score_ids(
    model,
    sequences: Sequence,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[ScoreResult]:
    """:class:`ScoreResult` s of token sequences under a decoder or XLNet (left to right; the first token
    is context)."""
    seqs = _as_tensors(sequences)
    lps = decoder_token_logprobs(model, seqs, window, stride, batch_size, progress)
    return [ScoreResult(float(lp.double().sum()), len(lp), s[1:].tolist(), lp.tolist()) for s, lp in zip(seqs, lps)]


@torch.inference_mode()
def order_score(model, sequence: Sequence[int], order: Sequence[int] | None = None) -> ScoreResult:
    """log P of a token sequence under an XLNet along the factorisation ``order`` (a permutation of
    its positions; default left to right): sum_t log P(x_{z_t} | x_{z_<t}) over t >= 1, the first
    position of the order being context. ``token_ids`` / ``token_logprobs`` follow the order."""
    if model_arch(model, "order scoring needs") != "xlnet":
        raise LMForgeError("order_score needs an XLNet model (arch xlnet); a decoder scores left to right only")
    ids = _as_tensor(sequence)
    z = torch.arange(len(ids)) if order is None else _as_tensor(order)
    if len(ids) < 2 or not torch.equal(z.sort().values, torch.arange(len(ids))):
        raise LMForgeError(f"order must be a permutation of the {len(ids)} positions (and there must be 2 or more)")
    device = _device(model)
    with eval_mode(model):
        lp = order_logprobs(model, ids[None].to(device), z[None].to(device))[0].cpu()
    return ScoreResult(float(lp.double().sum()), len(lp), ids[z[1:]].tolist(), lp.tolist())


# ----------------------------------------------------------------------------------------------
# Encoder: pseudo-log-likelihood


def _special_ids(cfg, tokenizer=None) -> set[int]:
    ids = set()
    for name in ("cls_id", "sep_id", "pad_id", "bos_id", "eos_id", "mask_id"):
        for src in (cfg, tokenizer):
            v = getattr(src, name, None) if src is not None else None
            if v is not None:
                ids.add(int(v))
    return ids


@torch.inference_mode()
def pseudo_log_likelihood(
    model,
    sequences: Sequence,
    mask_id: int | None = None,
    batch_size: int = 64,
    skip_ids: Iterable[int] | None = None,
    progress: bool | None = None,
) -> list[ScoreResult]:
    """PLL of token sequences under a masked LM: each scorable position (not a special token in
    ``skip_ids``, default the model's [CLS]/[SEP]/[PAD]/BOS/EOS/[MASK]) is replaced by ``mask_id``
    in its own copy of the sequence; the copies of all sequences are batched ``batch_size`` at a
    time and log P(original token) read at the masked position."""
    cfg = model.config
    mask_id = mask_id if mask_id is not None else cfg.mask_id
    if mask_id is None:
        raise LMForgeError("pseudo-log-likelihood needs a [MASK] token id (mask_id in the config or tokenizer)")
    skip = set(skip_ids) if skip_ids is not None else _special_ids(cfg)
    seqs = _as_tensors(sequences)
    for s in seqs:
        if cfg.positions != "none" and len(s) > cfg.max_positions:
            raise LMForgeError(
                f"a text of {len(s)} tokens exceeds the model's context max_positions="
                f"{cfg.max_positions}; split it into shorter texts"
            )
    positions = [[p for p, t in enumerate(s.tolist()) if t not in skip] for s in seqs]
    items = [(i, p) for i, ps in enumerate(positions) for p in ps]
    items.sort(key=lambda it: -len(seqs[it[0]]))
    device = _device(model)
    pad = cfg.pad_id if cfg.pad_id is not None else 0
    enc = getattr(model, "encoder", None)
    mlm = getattr(model, "mlm", None)
    lps = [torch.empty(len(ps), dtype=torch.float32) for ps in positions]
    where = {(i, p): j for i, ps in enumerate(positions) for j, p in enumerate(ps)}
    with eval_mode(model), closing(_progress(len(items), progress, "PLL")) as bar:
        for k in range(0, len(items), batch_size):
            batch = items[k : k + batch_size]
            L = max(len(seqs[i]) for i, _ in batch)
            ids = torch.full((len(batch), L), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), L, dtype=torch.long)
            for r, (i, p) in enumerate(batch):
                ids[r, : len(seqs[i])] = seqs[i]
                mask[r, : len(seqs[i])] = 1
                ids[r, p] = mask_id
            rows = torch.arange(len(batch), device=device)
            cols = torch.tensor([p for _, p in batch], device=device)
            tgts = torch.tensor([int(seqs[i][p]) for i, p in batch], device=device)
            ids = ids.to(device)
            attn = None if bool(mask.all()) else mask.to(device)
            if enc is not None and mlm is not None:
                h = enc(ids, attn).last_hidden_state[rows, cols]
                lp = head_logprobs(h, tgts, mlm, _chunk_rows(cfg.vocab_size, device))
            else:
                lp = logits_logprobs(model(ids, attn).logits[rows, cols], tgts)
            for (i, p), v in zip(batch, lp.cpu().tolist()):
                lps[i][where[(i, p)]] = v
            bar.update(len(batch))
    return [
        ScoreResult(float(lp.double().sum()), len(lp), [int(seqs[i][p]) for p in positions[i]], lp.tolist(), kind="pll")
        for i, lp in enumerate(lps)
    ]


# ----------------------------------------------------------------------------------------------
# Encoder-decoder: log P(y | x)


@torch.inference_mode()
def conditional_logprobs(
    model, sources: Sequence, targets: Sequence, batch_size: int = 16, progress: bool | None = None
) -> list[ScoreResult]:
    """log P(target | source) of token sequences under an encoder-decoder: every target token is
    scored (the decoder starts from its start token, as in training)."""
    cfg = model.config
    srcs, tgts = _as_tensors(sources), _as_tensors(targets)
    if len(srcs) != len(tgts):
        raise LMForgeError(f"{len(srcs)} sources but {len(tgts)} targets; give (source, target) pairs")
    for what, group in (("source", srcs), ("target", tgts)):
        for s in group:
            if cfg.positions != "none" and len(s) > cfg.max_positions:
                raise LMForgeError(
                    f"a {what} of {len(s)} tokens exceeds the model's context max_positions={cfg.max_positions}"
                )
    device = _device(model)
    pad = cfg.pad_id if cfg.pad_id is not None else 0
    order = sorted(range(len(srcs)), key=lambda i: -(len(srcs[i]) + len(tgts[i])))
    out: list[ScoreResult | None] = [None] * len(srcs)
    with eval_mode(model), closing(_progress(sum(len(t) for t in tgts), progress, "scoring")) as bar:
        for k in range(0, len(order), batch_size):
            batch = order[k : k + batch_size]
            S = max(max(len(srcs[i]) for i in batch), 1)
            T = max(max(len(tgts[i]) for i in batch), 1)
            src = torch.full((len(batch), S), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), S, dtype=torch.long)
            labels = torch.full((len(batch), T), -100, dtype=torch.long)
            for r, i in enumerate(batch):
                src[r, : len(srcs[i])] = srcs[i]
                mask[r, : len(srcs[i])] = 1
                labels[r, : len(tgts[i])] = tgts[i]
            src, mask, labels = src.to(device), mask.to(device), labels.to(device)
            dec_in = model.shift_right(labels)
            rows, cols = (labels != -100).nonzero(as_tuple=True)
            y = labels[rows, cols]
            attn = None if bool(mask.all()) else mask
            if hasattr(model, "encoder") and hasattr(model, "decoder") and hasattr(model, "lm_head"):
                enc = model.encode(src, attn).last_hidden_state
                h = model.decoder(dec_in, context=enc, context_mask=attn).last_hidden_state
                lp = head_logprobs(h[rows, cols], y, model.lm_head)
            else:
                logits = model(input_ids=src, attention_mask=attn, decoder_input_ids=dec_in).logits
                lp = logits_logprobs(logits[rows, cols], y)
            lp, rows = lp.cpu(), rows.cpu()
            for r, i in enumerate(batch):
                v = lp[rows == r]
                out[i] = ScoreResult(float(v.double().sum()), len(v), tgts[i].tolist(), v.tolist(), kind="conditional")
            bar.update(int(len(y)))
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Text in, scores out


def score(
    model,
    tokenizer,
    texts: str | Sequence,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    add_bos: bool | None = None,
    add_eos: bool = True,
    start_id: int | None = None,
) -> list[ScoreResult]:
    """Score texts with the model's own method (see the module doc).

    Decoder: ``texts`` are strings; log P, perplexity and bits per byte, with a sliding ``window``
    (default: the model's context) moving by ``stride`` (default window // 2) over long texts.
    Encoder: pseudo-log-likelihood of each string. Encoder-decoder: ``texts`` are
    ``(source, target)`` pairs and the score is log P(target | source) (source and target end with
    EOS when the tokenizer / model has one; ``add_eos=False`` leaves it off the target). Bits per byte counts the UTF-8 bytes of
    the scored text (the target for pairs).

    Decoder start token: the model's ``text_start_id`` (EOS for a model lmforge pretrained: the
    token that preceded every document in training), else BOS when the tokenizer has one
    (``add_bos=False`` leaves it out: then the first token is not scored); ``start_id`` puts
    another token in front instead.
    """
    arch = model_arch(model, "scoring needs")
    if isinstance(texts, str):
        texts = [texts]
    elif (
        arch == "encoder-decoder"
        and isinstance(texts, tuple)
        and len(texts) == 2
        and all(isinstance(t, str) for t in texts)
    ):
        texts = [texts]  # one (source, target) pair
    texts = list(texts)
    if arch in ("decoder", "xlnet"):  # XLNet: left to right, as a decoder
        for t in texts:
            if not isinstance(t, str):
                raise LMForgeError(f"a{'n' if arch == 'xlnet' else ''} {arch} scores strings; give a list of texts")
        seqs = [encode_for_decoder(tokenizer, t, add_bos, start_id, model) for t in texts]
        res = score_ids(model, seqs, window, stride, batch_size, progress)
    elif arch == "encoder":
        seqs = [encode_for_encoder(tokenizer, t, model) for t in texts]
        mask = special_id(tokenizer, "mask", model)
        res = pseudo_log_likelihood(
            model,
            seqs,
            mask,
            batch_size=max(batch_size, 64),
            skip_ids=_special_ids(model.config, tokenizer),
            progress=progress,
        )
    else:
        pairs = []
        for t in texts:
            if isinstance(t, str) or len(t) != 2:
                raise LMForgeError("an encoder-decoder scores (source, target) pairs: log P(target | source)")
            pairs.append((str(t[0]), str(t[1])))
        eos = special_id(tokenizer, "eos", model)
        srcs = [encode_source(tokenizer, s, model) for s, _ in pairs]
        tgts = []
        for _, y in pairs:
            ids = list(tokenizer.encode(y))
            if add_eos and eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            tgts.append(ids)
        res = conditional_logprobs(model, srcs, tgts, batch_size, progress)
        texts = [y for _, y in pairs]
        for r, (_, y) in zip(res, pairs):
            r.text = y
    for r, t in zip(res, texts):
        if r.text is None:
            r.text = t
        r.n_bytes = len(t.encode("utf-8"))
    return res
