"""Prompt encoding: text -> the ids a model reads, for every model family, in one place.

Scoring, generation, fill-mask, span filling, attention maps and the server all encode through
these functions, so a text means the same ids to each of them:

- a decoder's text follows its start token (:func:`text_start_id`: the model's ``text_start_id``,
  else the tokenizer's BOS): :func:`encode_for_decoder`, and for a prompt :func:`encode_prompt`;
- an encoder-decoder's source ends with EOS: :func:`encode_source`;
- an encoder's text is wrapped in [CLS] ... [SEP]: :func:`encode_for_encoder`, with masks written
  in the text: :func:`encode_masked`.

:func:`pad_batch` pads lists of ids into a (B, L) batch with its attention mask. Special-token
ids come from :func:`lmforge.tokenizer.special_id` (the tokenizer's, else the model config's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmforge.errors import LMForgeError
from lmforge.tokenizer import special_id


def model_arch(model, needs: str = "generation needs") -> str:
    """The model's family (``decoder``, ``encoder``, ``encoder-decoder``), which decides how a text is
    encoded; an error saying what ``needs`` an lmforge model when there is no config to tell."""
    arch = getattr(getattr(model, "config", None), "arch", None)
    if arch is None:
        raise LMForgeError(f"{needs} an lmforge model (with a .config)")
    return arch


def text_start_id(tokenizer, model=None) -> int | None:
    """The token a decoder's text follows: the model's ``text_start_id`` (set by lmforge's causal
    pretraining to EOS, its document separator), else the tokenizer's BOS; None when neither."""
    start = getattr(getattr(model, "config", None), "text_start_id", None)
    return start if start is not None else special_id(tokenizer, "bos")


def encode_for_decoder(
    tokenizer, text: str, add_bos: bool | None = None, start_id: int | None = None, model=None
) -> list[int]:
    """Ids of ``text`` with the start token in front: ``start_id`` if given, else
    :func:`text_start_id` (the model's start token, else BOS). ``add_bos``: False leaves the start
    token out; None puts it in when there is one; True insists on one."""
    ids = list(tokenizer.encode(text))
    if start_id is not None:
        return [int(start_id)] + ids
    if add_bos is False:
        return ids
    start = text_start_id(tokenizer, model)
    if start is None:
        if add_bos:
            raise LMForgeError("add_bos=True but the tokenizer has no BOS token")
        return ids
    if not ids or ids[0] != start:
        ids = [start] + ids
    return ids


START_CHOICES = ("auto", "bos", "eos", "none")


@dataclass(frozen=True)
class StartToken:
    """How a decoder's texts start, as :func:`~lmforge.infer.score` and :func:`encode_for_decoder`
    take it: ``add_bos`` and ``start_id``; ``first_scored`` says whether a token stands in front of
    each text (else its first token has no context and is not scored)."""

    add_bos: bool | None = None
    start_id: int | None = None
    first_scored: bool = True


def resolve_start(start: str, tokenizer, model) -> StartToken:
    """The start token that ``start`` names (``lmforge score --start``): ``auto`` (the model's
    :func:`text_start_id`, else BOS), ``bos`` or ``eos`` (the tokenizer's, else the model
    config's), ``none``. Only decoders (and XLNet, scored left to right) have one; for other models
    every choice is the default."""
    if start not in START_CHOICES:
        raise LMForgeError(f"--start: expected one of {', '.join(START_CHOICES)}, got {start!r}")
    if model_arch(model, "scoring needs") not in ("decoder", "xlnet"):
        return StartToken()
    if start in ("bos", "eos"):
        start_id = special_id(tokenizer, start, model)
        if start_id is None:
            raise LMForgeError(f"--start {start}: the tokenizer has no {start.upper()} token; use --start auto or none")
        return StartToken(start_id=start_id)
    if start == "none":
        return StartToken(add_bos=False, first_scored=False)
    return StartToken(first_scored=text_start_id(tokenizer, model) is not None)


def encode_prompt(tokenizer, text: str, model, add_bos: bool | None = None) -> list[int]:
    """Prompt ids for a decoder: the start token first (the model's ``text_start_id``, else BOS;
    see :func:`text_start_id`) when there is one and ``add_bos`` is not False. An empty prompt
    without a start token starts from EOS."""
    ids = encode_for_decoder(tokenizer, text, False if add_bos is False else None, model=model)
    if not ids:
        eos = special_id(tokenizer, "eos", model)
        if eos is None:
            raise LMForgeError("empty prompt and the tokenizer has no BOS / EOS token to start from; give some text")
        ids = [eos]
    return ids


def encode_source(tokenizer, text: str, model=None) -> list[int]:
    """An encoder-decoder's source: the text's ids + EOS (when there is one), as lmforge's seq2seq
    objectives and fine-tuning build it."""
    ids = list(tokenizer.encode(text))
    eos = special_id(tokenizer, "eos", model)
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def encode_for_encoder(tokenizer, text: str, model=None) -> list[int]:
    """Ids wrapped in [CLS] ... [SEP] when the tokenizer has them (and did not add them)."""
    ids = list(tokenizer.encode(text))
    cls = special_id(tokenizer, "cls", model)
    sep = special_id(tokenizer, "sep", model)
    if cls is not None and (not ids or ids[0] != cls):
        ids = [cls] + ids
    if sep is not None and ids[-1] != sep:
        ids = ids + [sep]
    return ids


def encode_masked(tokenizer, text: str, mask_token: str, model=None) -> list[int]:
    """An encoder's ids of ``text`` in which ``mask_token`` marks masked positions: the mask id at
    each, also where the tokenizer does not map the mask string to its id by itself."""
    mask_id = special_id(tokenizer, "mask", model)
    if mask_id is None:
        raise LMForgeError("the tokenizer / model has no [MASK] token")
    ids = encode_for_encoder(tokenizer, text, model)
    if mask_id in ids or mask_token not in text:
        return ids
    # the tokenizer did not map the mask string to its id: encode the pieces around it
    specials = {special_id(tokenizer, n, model) for n in ("cls", "sep", "bos", "eos")} - {None}
    out: list[int] = []
    for k, piece in enumerate(text.split(mask_token)):
        if k:
            out.append(mask_id)
        out += [t for t in tokenizer.encode(piece.strip()) if t not in specials] if piece.strip() else []
    cls, sep = special_id(tokenizer, "cls", model), special_id(tokenizer, "sep", model)
    return ([cls] if cls is not None else []) + out + ([sep] if sep is not None else [])


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and mask from lists of ids, padded on ``side``."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        if side == "left":
            ids[i, L - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, L - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
