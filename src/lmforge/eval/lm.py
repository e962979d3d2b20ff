"""The ``lmforge`` model of lm-evaluation-harness (lm-eval 0.4.x): harness requests answered with
lmforge's own scoring and generation.

=========================  ==================================================  =========================
request                    decoder                                             encoder-decoder
=========================  ==================================================  =========================
``loglikelihood``          log P(continuation | context): the two as one       log P(continuation |
(context, continuation)    sequence through ``decoder_token_logprobs``; is it  source = context + EOS)
                           greedy? one greedy generation per distinct context  (``conditional_logprobs``)
``loglikelihood_rolling``  log P(text | start token), windows of the context   not a request an
(text)                     moving by ``stride`` (default: the harness's own    encoder-decoder answers
                           rolling windows)
``generate_until``         ``generate_ids`` from the context, cut at the       ``generate_ids`` from the
(context, kwargs)          first ``until`` string                              source
=========================  ==================================================  =========================

**Tokens.** The requests are encoded as the harness's ``hf`` model encodes them for a tokenizer
that adds no special tokens (lmforge's add none): a context as it is; the continuation is what
encoding context + continuation adds. The *start token* (the model's ``text_start_id``: EOS for a
model lmforge pretrained, else BOS, else EOS; see docs/inference.md) is the harness's prefix
token: it comes before a text scored whole and before a continuation with an empty context, so
``loglikelihood_rolling`` of a text is ``lmforge score`` of it. ``add_start_token=True`` also puts
it before every context and prompt, as lmforge's own scoring, generation and completion
fine-tuning do (the way the harness treats a tokenizer that adds a BOS).

**Windows.** lmforge's scoring reads windows of at most ``max_positions`` tokens, the last of them
a target only, so a prediction sees at most ``max_positions - 1`` tokens: that is this model's
``max_length`` in the harness's sense. Rolling windows move by ``max_length`` (``stride``), which
is the harness's rolling scheme for that ``max_length``: ``lmforge score --window W --stride W-1``
gives the same log P; a smaller ``stride`` gives each token more context (lmforge's sliding
window), at more cost, and no longer compares with other harness models.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

from lmforge.errors import ConfigError, LMForgeError
from lmforge.infer import conditional_logprobs, decoder_token_logprobs, generate_ids, load_for_inference
from lmforge.tokenizer import special_id

DEFAULT_BATCH_SIZE = 16
UNLIMITED_CONTEXT = 2048  # max_length of a model without position limits (positions="none")
GENERATE_KWARGS = ("temperature", "top_k", "top_p", "repetition_penalty", "num_beams")


def _int_arg(name: str, value, default: int | None) -> int | None:
    """A number from the harness's ``key=value`` model arguments ("auto" batch sizes: the default)."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None


def _pad(rows: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and attention mask of token lists padded on ``side``."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(L - len(r), L) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


@register_model("lmforge")
class LMForgeLM(TemplateLM):
    """An lmforge decoder or encoder-decoder in the harness.

    ``pretrained``: a model directory (lmforge's, or an HF one with a ``tokenizer.json``), or pass
    ``model`` and ``tokenizer`` objects. ``batch_size``: sequences per forward pass. ``max_length``:
    context tokens a prediction may see (default: the model's ``max_positions - 1``). ``stride``:
    tokens rolling windows move by (default ``max_length``). ``add_start_token``: the start token
    before contexts too. ``seed``: sampled generations.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        model=None,
        tokenizer=None,
        batch_size=DEFAULT_BATCH_SIZE,
        device: str | None = "auto",
        dtype: str | None = "fp32",
        max_length=None,
        stride=None,
        max_gen_toks=None,
        add_start_token=False,
        seed=0,
        max_batch_size=None,
        **unused,
    ):
        super().__init__()
        if unused:
            raise ConfigError(
                f"model_args: the lmforge model takes no {', '.join(sorted(unused))} (it takes "
                "pretrained, batch_size, device, dtype, max_length, stride, max_gen_toks, "
                "add_start_token, seed)"
            )
        if model is None:
            if pretrained is None:
                raise ConfigError("pretrained: give a model directory (model_args pretrained=DIR)")
            model, tokenizer = load_for_inference(pretrained, device or "auto", dtype)
        elif tokenizer is None:
            raise ConfigError("tokenizer: a model object needs its tokenizer (tokenizer=...)")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = str(pretrained) if pretrained is not None else type(model).__name__
        cfg = model.config
        self.arch = cfg.arch
        if self.arch == "xlnet":
            raise ConfigError(
                "pretrained: lmforge's XLNet is not wired to the harness yet; evaluate it with lmforge score"
            )
        if self.arch == "encoder":
            raise ConfigError(
                "pretrained: an encoder (masked LM) has no chain rule for the harness's "
                "log-likelihood requests; evaluate a decoder or an encoder-decoder"
            )
        self.backend = "causal" if self.arch == "decoder" else "seq2seq"
        limit = cfg.max_positions if cfg.positions != "none" else UNLIMITED_CONTEXT + 1
        self._max_length = _int_arg("max_length", max_length, limit - 1)
        if not 1 <= self._max_length < limit:
            raise ConfigError(
                f"max_length: must be in [1, {limit - 1}] for a context of {limit} positions "
                f"(a scoring window holds max_length + 1 tokens), got {self._max_length}"
            )
        self.window = self._max_length + 1
        self.stride = _int_arg("stride", stride, self._max_length)
        if not 1 <= self.stride <= self._max_length:
            raise ConfigError(f"stride: must be in [1, max_length={self._max_length}], got {self.stride}")
        self.batch_size = _int_arg("batch_size", batch_size, DEFAULT_BATCH_SIZE)
        self._max_gen_toks = _int_arg("max_gen_toks", max_gen_toks, min(256, self.window // 2))
        self.seed = _int_arg("seed", seed, 0)
        if str(add_start_token).lower() not in ("true", "false"):
            raise ConfigError(f"add_start_token: true or false, got {add_start_token!r}")
        self.add_start_token = str(add_start_token).lower() == "true"
        self._device = next(model.parameters()).device

    # ---- what the harness asks about the model ----------------------------------------------
    def _special(self, name: str) -> int | None:
        return special_id(self.tokenizer, name, self.model)

    @property
    def eot_token_id(self) -> int:
        eos = self._special("eos_id")
        return eos if eos is not None else self.prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token texts start after: the model's ``text_start_id``, else BOS, else EOS."""
        for start in (self.model.config.text_start_id, self._special("bos_id"), self._special("eos_id")):
            if start is not None:
                return int(start)
        raise ConfigError("the tokenizer has no BOS / EOS token for texts to start after; the harness needs one")

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return f"lmforge-{getattr(self.tokenizer, 'fingerprint', 'tokenizer')}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = list(self.tokenizer.encode(string))
        if self.add_start_token and add_special_tokens is not False and self.backend == "causal":
            return [self.prefix_token_id] + ids
        return ids

    def tok_decode(self, tokens) -> str:
        try:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)
        except TypeError:
            return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        return {"model": self.name, "arch": self.arch, "max_length": self.max_length, "stride": self.stride}

    def _progress(self, disable_tqdm: bool) -> bool | None:
        return False if disable_tqdm else None

    # ---- loglikelihood ------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        contexts, conts = [], []
        for _, ctx, cont in requests:
            if not cont:
                raise LMForgeError("loglikelihood: an empty continuation has nothing to score")
            if len(cont) > self.max_length:
                raise LMForgeError(
                    f"loglikelihood: a continuation of {len(cont)} tokens exceeds the model's "
                    f"max_length={self.max_length}"
                )
            if self.backend == "causal":
                ctx = (list(ctx) + list(cont))[-self.window :][: -len(cont)]  # left-truncated, as the harness does
            contexts.append(list(ctx))
            conts.append(list(cont))
        if self.backend == "causal":
            lps = decoder_token_logprobs(
                self.model,
                [c + x for c, x in zip(contexts, conts)],
                window=self.window,
                batch_size=self.batch_size,
                progress=self._progress(disable_tqdm),
            )
            logprobs = [float(lp[-len(x) :].double().sum()) for lp, x in zip(lps, conts)]
        else:
            contexts = [self._source(c) for c in contexts]
            res = conditional_logprobs(self.model, contexts, conts, self.batch_size, self._progress(disable_tqdm))
            logprobs = [r.logprob for r in res]
        greedy = self._greedy_matches(contexts, conts)
        out = []
        for (pair, _, _), lp, g in zip(requests, logprobs, greedy):
            out.append((lp, g))
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, (lp, g))
        return out

    def _source(self, ids: list[int]) -> list[int]:
        """An encoder-decoder's source: the context (the last max_positions - 1 tokens) + EOS, as
        lmforge's seq2seq fine-tuning builds it."""
        eos = self._special("eos_id")
        ids = list(ids)[-self.max_length :]
        if eos is None:
            return ids or [self.prefix_token_id]
        return ids if ids and ids[-1] == eos else ids + [eos]

    def _greedy_matches(self, contexts: list[list[int]], conts: list[list[int]]) -> list[bool]:
        """Whether each continuation is what greedy decoding from its context gives: one greedy
        generation per distinct context, as long as its longest continuation."""
        need: dict[tuple[int, ...], int] = defaultdict(int)
        for c, x in zip(contexts, conts):
            need[tuple(c)] = max(need[tuple(c)], len(x))
        by_length: dict[int, list[tuple[int, ...]]] = defaultdict(list)  # same length per batch: it fits the context
        for c, n in need.items():
            by_length[n].append(c)
        generated: dict[tuple[int, ...], list[int]] = {}
        for n, keys in by_length.items():
            for k in range(0, len(keys), self.batch_size):
                batch = keys[k : k + self.batch_size]
                out = self._generate([list(b) for b in batch], n, eos=None, do_sample=False)
                generated.update(zip(batch, out.token_lists()))
        return [generated[tuple(c)][: len(x)] == x for c, x in zip(contexts, conts)]

    def _generate(self, prompts: list[list[int]], max_new: int, eos, callback=None, **kwargs):
        pad = self._special("pad_id")
        pad = pad if pad is not None else self.eot_token_id
        side = "left" if self.backend == "causal" else "right"
        ids, mask = _pad(prompts, pad, side)
        return generate_ids(
            self.model,
            ids.to(self._device),
            mask.to(self._device),
            max_new_tokens=max_new,
            eos_id=eos,
            pad_id=pad,
            callback=callback,
            **kwargs,
        )

    # ---- loglikelihood_rolling ----------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        if self.backend != "causal":
            raise LMForgeError(
                "loglikelihood_rolling (perplexity of whole texts) needs a decoder; an "
                "encoder-decoder scores a target given a source"
            )
        texts = [req.args[0] for req in requests]
        seqs = [[self.prefix_token_id] + self.tok_encode(t, add_special_tokens=False) for t in texts]
        lps = decoder_token_logprobs(
            self.model,
            seqs,
            window=self.window,
            stride=self.stride,
            batch_size=self.batch_size,
            progress=self._progress(disable_tqdm),
        )
        out = [float(lp.double().sum()) for lp in lps]
        for t, lp in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (t,), lp)
        return out

    # ---- generate_until -----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)  # one batch setting per set of generation kwargs
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        out: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = [s for s in kw.pop("until") if s]
            max_new = kw.pop("max_gen_toks")
            do_sample = bool(kw.pop("do_sample", False))
            extra = {k: kw.pop(k) for k in GENERATE_KWARGS if k in kw}
            if kw:
                warnings.warn(f"generate_until: the lmforge model ignores {', '.join(sorted(kw))}", stacklevel=2)
            # a prompt may hold max_length - max_new tokens, as the harness's hf model cuts it
            budget = self.max_length - max_new if self.backend == "causal" else self.window
            if budget < 1:
                raise ConfigError(
                    f"max_gen_toks: {max_new} new tokens leave no room for a prompt within the "
                    f"model's max_length of {self.max_length} tokens"
                )
            prompts = {}
            for i in indices:
                ids = self.tok_encode(requests[i].args[0])
                causal = self.backend == "causal"
                prompts[i] = (ids or [self.prefix_token_id])[-budget:] if causal else self._source(ids)
            order = sorted(indices, key=lambda i: -len(prompts[i]))
            for k in range(0, len(order), self.batch_size):
                batch = order[k : k + self.batch_size]
                texts = self._generate_texts([prompts[i] for i in batch], max_new, until, do_sample, extra)
                for i, text in zip(batch, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _generate_texts(
        self, prompts: list[list[int]], max_new: int, until: list[str], do_sample: bool, extra: dict
    ) -> list[str]:
        rows: list[list[int]] = [[] for _ in prompts]

        def stop_at_until(step, tokens):  # a row stops once its text holds a stop string
            for row, t in zip(rows, tokens.tolist()):
                row.append(t)
            return [any(s in self.tok_decode(row) for s in until) for row in rows]

        out = self._generate(
            prompts,
            max_new,
            eos=self.eot_token_id,
            callback=stop_at_until if until else None,
            do_sample=do_sample,
            seed=self.seed if do_sample else None,
            **extra,
        )
        eos = self.eot_token_id
        texts = []
        for toks in out.token_lists():
            toks = toks[:-1] if toks and toks[-1] == eos else toks
            texts.append(postprocess_generated_text(self.tok_decode(toks), until, None))
        return texts


def hf_model_args(directory: str | Path) -> dict:
    """Arguments for lm-eval's ``hf`` model that make it read an exported lmforge decoder as the
    ``lmforge`` model does: the same prefix token (``lmforge_text_start_id`` in the HF config, else
    BOS), the same ``max_length`` (``n_positions - 1``), in fp32, and the directory's
    ``tokenizer.json`` with lmforge's special-token roles (an HF directory that lmforge writes has
    no tokenizer config, and transformers would make up GPT-2's ``<|endoftext|>`` for BOS, EOS and
    padding, a token outside the vocabulary)."""
    directory = Path(directory)
    try:
        hf = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ConfigError(
            f"{directory}: no readable config.json; --harness-model hf needs an HF model directory "
            "(lmforge convert to-hf MODEL OUT)"
        ) from None
    if "model_type" not in hf:
        raise ConfigError(
            f"{directory}: an lmforge model directory; --harness-model hf reads HF ones "
            "(lmforge convert to-hf MODEL OUT)"
        )
    args = {"pretrained": str(directory), "dtype": "float32"}
    start = hf.get("lmforge_text_start_id", hf.get("bos_token_id"))
    if start is not None:
        args["prefix_token_id"] = int(start)
    positions = hf.get("n_positions", hf.get("max_position_embeddings"))
    if positions:
        args["max_length"] = int(positions) - 1
    if (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        from transformers import PreTrainedTokenizerFast

        from lmforge import load_tokenizer

        tok = load_tokenizer(directory / "tokenizer.json")
        ids = {r: special_id(tok, r) for r in ("bos", "eos", "pad", "unk")}
        roles = {f"{r}_token": tok.id_to_token(i) for r, i in ids.items() if i is not None}
        args["tokenizer"] = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **roles)
    return args
