"""Generation, text in and text out: :func:`generate` encodes the prompts
(:mod:`lmforge.infer.prompts`), pads them, runs :func:`~lmforge.infer.decoding.generate_ids`,
decodes the completions, applies stop strings and streams text as it comes (:class:`TextTracker`).

The rooms below it: :mod:`~lmforge.infer.sampling` (logit processors, the token chooser),
:mod:`~lmforge.infer.steppers` (one forward per step, decoder and encoder-decoder),
:mod:`~lmforge.infer.decoding` (the sampling and beam loops), :mod:`~lmforge.infer.results`
(:class:`~lmforge.infer.results.GenerateOutput`, :class:`~lmforge.infer.results.Completion`);
fill-mask and span filling live in :mod:`~lmforge.infer.fill`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmforge.infer.decoding import generate_ids
from lmforge.infer.options import SamplingOptions, options_from
from lmforge.infer.prompts import encode_prompt, encode_source, model_arch, pad_batch
from lmforge.infer.results import Completion, GenerateOutput
from lmforge.infer.sampling import make_generator
from lmforge.tokenizer import special_id

__all__ = ["Completion", "GenerateOutput", "TextTracker", "decode_text", "generate", "generate_ids"]


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """Text of generated ids, special tokens left out when the tokenizer can do that."""
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(ids)


class TextTracker:
    """Incremental decoding of one row: emits text that is final (not a partial UTF-8 character and
    not possibly the start of a stop string) and detects stop strings. :meth:`add` takes each new
    token and returns the text that became final; :meth:`flush` the rest at the end. Used by
    :func:`generate` and the server's engine."""

    def __init__(self, tokenizer, stop: Sequence[str], eos: int | None):
        self.tok, self.stop, self.eos = tokenizer, [s for s in stop if s], eos
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        if self.stopped:
            return ""
        if self.eos is not None and token == self.eos:
            self.stopped = True
            return self.flush()
        self.ids.append(token)
        self.text = decode_text(self.tok, self.ids)
        for s in self.stop:
            j = self.text.find(s)
            if j >= 0:
                self.text = self.text[:j]
                self.stopped = True
                return self.flush()
        safe = len(self.text) - self.hold
        if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
            safe = min(safe, len(self.text.rstrip("\ufffd")))
        if safe > self.emitted:
            delta, self.emitted = self.text[self.emitted : safe], safe
            return delta
        return ""

    def flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] | str | None = None,
    seed: int | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    stream: Callable[[int, str], None] | None = None,
    do_sample: bool | None = None,
    add_bos: bool | None = None,
    batch_size: int | None = None,
    use_cache: bool = True,
    options: SamplingOptions | None = None,
) -> list[Completion]:
    """Complete each prompt (for an encoder-decoder: the source) and return :class:`Completion` s.

    ``temperature=0`` (or ``do_sample=False``) is greedy; otherwise sampling with ``top_k`` /
    ``top_p`` / ``repetition_penalty`` from a generator seeded with ``seed``. ``num_beams > 1`` is
    beam search. ``stop``: strings that end a completion (not included in its text).
    ``stream(i, text)`` receives prompt i's new text as it is generated (not with beam search).
    Decoder prompts start with the model's start token (:func:`encode_prompt`; ``add_bos=False``
    leaves it out), are left-padded and run in batches of ``batch_size`` (default: all at once).
    ``options``: a :class:`~lmforge.infer.options.SamplingOptions` (as ``lmforge generate`` builds
    from its flags) in place of the numeric keyword arguments.
    """
    if options is None:  # refuse bad options before any work
        options = options_from(locals())
    o = options
    max_new_tokens, temperature, top_k, top_p = o.max_new_tokens, o.temperature, o.top_k, o.top_p
    repetition_penalty, seed, num_beams, length_penalty = o.repetition_penalty, o.seed, o.num_beams, o.length_penalty
    batch_size = o.batch_size
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        return []
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop or [])
    arch = model_arch(model)
    device = next(model.parameters()).device
    eos = special_id(tokenizer, "eos", model)
    pad = special_id(tokenizer, "pad", model)
    if pad is None:
        pad = eos if eos is not None else 0
    if arch == "decoder":
        encoded = [encode_prompt(tokenizer, p, model, add_bos) for p in prompts]
    else:
        encoded = [encode_source(tokenizer, p, model) or [pad] for p in prompts]
    if do_sample is None:
        do_sample = temperature > 0 and num_beams == 1
    generator = make_generator(seed, device) if do_sample else None
    bs = batch_size or len(prompts)
    results: list[Completion] = []
    for start in range(0, len(prompts), bs):
        chunk = encoded[start : start + bs]
        ids, mask = pad_batch(chunk, pad, "left" if arch == "decoder" else "right", device)
        trackers = [TextTracker(tokenizer, stop, eos) for _ in chunk]

        def follow(step, tokens, trackers=trackers, offset=start):  # stream text, stop at stop strings
            stops = []
            for j, (tr, t) in enumerate(zip(trackers, tokens.tolist())):
                delta = tr.add(t)
                if delta and stream is not None:
                    stream(offset + j, delta)
                stops.append(tr.stopped)
            return stops

        callback = follow if num_beams == 1 and (stream is not None or stop) else None
        out = generate_ids(
            model,
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            num_beams=num_beams,
            length_penalty=length_penalty,
            eos_id=eos,
            pad_id=pad,
            generator=generator,
            use_cache=use_cache,
            callback=callback,
        )
        for j, toks in enumerate(out.token_lists()):
            tr = trackers[j]
            if callback is not None:
                if stream is not None:
                    rest = tr.flush()
                    if rest:
                        stream(start + j, rest)
                text = tr.text
                stopped_by_string = tr.stopped and not (eos is not None and toks and toks[-1] == eos)
            else:
                body = toks[:-1] if (eos is not None and toks and toks[-1] == eos) else toks
                text = decode_text(tokenizer, body)
                stopped_by_string = False
                if stop:
                    for s in stop:
                        k = text.find(s)
                        if k >= 0:
                            text, stopped_by_string = text[:k], True
            if stopped_by_string:
                reason = "stop"
            elif eos is not None and toks and toks[-1] == eos:
                reason = "eos"
            else:
                reason = "length"
            score = float(out.scores[j]) if out.scores is not None else None
            results.append(Completion(prompts[start + j], text, toks, reason, score))
    return results
