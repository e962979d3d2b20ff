"""The HTTP layer: FastAPI routes in OpenAI's shapes over one :class:`~lmforge.serve.engine.Engine`.

Routes: ``GET /health`` (no key needed), ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions``, and the tokenizer routes lm-evaluation-harness's ``remote``
tokenizer reads (``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``).

Safety: the API key (when set) is checked on every route but ``/health`` (401 otherwise); bodies
over ``max_body_bytes`` get 413; everything else a client gets wrong is a 4xx in OpenAI's error
JSON naming the field (:mod:`lmforge.serve.protocol`). A client that goes away cancels its
request, which leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from dataclasses import dataclass

from lmforge.errors import LMForgeError
from lmforge.serve.chat import ChatFormatter
from lmforge.serve.engine import (
    Delta,
    Engine,
    EngineBusy,
    Failed,
    Finished,
    Job,
    PromptLogprobs,
)
from lmforge.serve.protocol import (
    APIError,
    Limits,
    bad,
    chat_logprobs,
    completion_logprobs,
    parse_chat,
    parse_completion,
    usage,
)
from lmforge.tokenizer import special_id

INSTALL_HINT = 'lmforge serve needs the serve extra: pip install -e ".[serve]" (FastAPI and uvicorn)'


def require_extra() -> None:
    """Raise a one-line :class:`~lmforge.errors.LMForgeError` when FastAPI / uvicorn are missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LMForgeError(INSTALL_HINT) from None


@dataclass
class ServeConfig:
    """Server settings (the ``lmforge serve`` flags)."""

    api_key: str | None = None  # required on every route but /health when set
    max_batch: int = 8  # batch slots: requests decoded together
    max_tokens: int | None = None  # new tokens per choice at most (default: the model's context)
    max_n: int = 8  # choices per prompt at most (and never more than max_batch)
    max_body_bytes: int = 1 << 20
    max_waiting: int = 256  # requests waiting for a slot before 429
    model_name: str | None = None  # the id clients send as "model" (default: the model directory as given)
    batch_invariant: bool = True  # fixed step shapes: a request's tokens never depend on the others


class _Chunk:
    """One choice's pieces as they arrive."""

    __slots__ = ("n_tokens", "reason", "text", "tokens")

    def __init__(self):
        self.text, self.tokens, self.reason, self.n_tokens = [], [], None, 0


class Service:
    """What the routes share: model, tokenizer, engine, chat formatter and limits."""

    def __init__(self, model, tokenizer, config: ServeConfig, chat_template: str | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        cfg = model.config
        self.arch, self.context, self.vocab = cfg.arch, cfg.max_positions, cfg.vocab_size
        self.name = config.model_name or "lmforge"
        self.created = int(time.time())
        self.limits = Limits(
            max_tokens=min(config.max_tokens or self.context, self.context), max_n=min(config.max_n, config.max_batch)
        )
        self.engine = (
            Engine(model, tokenizer, config.max_batch, config.max_waiting, config.batch_invariant)
            if self.arch in ("decoder", "encoder-decoder")
            else None
        )
        self.chat = ChatFormatter(chat_template, tokenizer)

        self.piece = functools.lru_cache(maxsize=65536)(self._piece)  # a token's text, e.g. " the"

    def _piece(self, i: int) -> str:
        return self.tokenizer.decode([i])

    # ---- prompts ---------------------------------------------------------------------------
    def encode(self, prompt, field: str = "prompt") -> tuple[list[int], int]:
        """(ids the model reads, how many of them the server put in front: the start token)."""
        from lmforge.infer.prompts import encode_prompt, encode_source

        if isinstance(prompt, list):
            return list(prompt), 0
        try:
            if self.arch == "encoder-decoder":
                eos = self.tokenizer.eos_id
                return encode_source(self.tokenizer, prompt, self.model) or [eos if eos is not None else 0], 0
            ids = encode_prompt(self.tokenizer, prompt, self.model)
            return ids, len(ids) - len(self.tokenizer.encode(prompt))
        except LMForgeError as e:  # an empty prompt with no start token, text that is not valid Unicode
            raise bad(field, str(e)) from None

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name != self.name:
            raise APIError(
                404,
                f"model: {name!r} is not served here; this server has {self.name!r}",
                "model",
                code="model_not_found",
            )

    def generating(self) -> Engine:
        if self.engine is None:
            raise APIError(
                400,
                "this model is an encoder (masked LM): it does not generate text; ask it to fill "
                'masks instead: lmforge fill-mask MODEL_DIR "text with [MASK]"',
                "model",
            )
        return self.engine

    def submit(self, prompts: list[tuple[list[int], int]], sampling, n: int, echo_k: int | None):
        """Queue one job per prompt; (jobs, queue of (job index, events))."""
        engine = self.generating()
        for ids, _ in prompts:
            try:
                engine.check(len(ids), sampling.max_tokens, n)
            except LMForgeError as e:  # "field: what is wrong"
                field, _, message = str(e).partition(": ")
                raise bad(field, message) from None
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        jobs = []
        try:
            for k, (ids, _) in enumerate(prompts):

                def sink(events, k=k):
                    loop.call_soon_threadsafe(queue.put_nowait, (k, events))

                jobs.append(Job(ids, sampling, sink, n, echo_k))
                engine.submit(jobs[-1])
        except EngineBusy as e:
            for j in jobs:
                j.cancel()
            raise APIError(429 if "waiting" in str(e) else 503, str(e), kind="server_error") from None
        return jobs, queue

    @staticmethod
    async def events(request, jobs: list[Job], queue: asyncio.Queue, watch: bool):
        """(job index, event) until every choice finished; a Failed event raises. Cancels the jobs
        on the way out (a no-op for finished ones): a client that left frees its slots. ``watch``:
        poll for a disconnected client (a streaming response is told by Starlette instead)."""
        remaining = {k: j.n for k, j in enumerate(jobs)}
        checked = time.monotonic()
        try:
            while remaining:
                if watch and time.monotonic() - checked > 0.5:
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                try:
                    k, evs = await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                for ev in evs:
                    if isinstance(ev, Failed):
                        raise APIError(500, f"the request failed: {ev.message}", kind="server_error")
                    yield k, ev
                    if isinstance(ev, Finished):
                        remaining[k] -= 1
                        if not remaining[k]:
                            del remaining[k]
        finally:
            for j in jobs:
                j.cancel()

    # ---- completions -----------------------------------------------------------------------
    async def completions(self, request, body: dict):
        req = parse_completion(body, self.limits, self.vocab)
        self.check_model(body)
        if req.echo and self.arch == "encoder-decoder":
            raise bad("echo", "an encoder-decoder's prompt is its source, which it does not score; leave echo out")
        prompts = [self.encode(p) for p in req.prompts]
        texts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in req.prompts]
        echo_k = req.logprobs if req.echo and req.logprobs is not None else None
        jobs, queue = self.submit(prompts, req.sampling, req.n, echo_k)
        rid, n = f"cmpl-{uuid.uuid4().hex}", req.n
        head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.name}

        def echoed(k: int, ev: PromptLogprobs | None) -> tuple[str, dict | None]:
            if ev is None:
                return texts[k], None
            return texts[k], completion_logprobs(ev.tokens[prompts[k][1] :], self.piece)

        if req.stream:

            async def stream():
                completion_tokens = 0
                if req.echo and echo_k is None:
                    for k in range(len(prompts)):
                        for c in range(n):
                            yield _sse({**head, "choices": [_choice(k * n + c, texts[k], None, None)]})
                offsets = {}
                async for k, ev in self.events(request, jobs, queue, watch=False):
                    if isinstance(ev, PromptLogprobs):
                        text, lp = echoed(k, ev)
                        for c in range(n):
                            offsets[k * n + c] = len(text)
                            yield _sse({**head, "choices": [_choice(k * n + c, text, lp, None)]})
                    elif isinstance(ev, Delta):
                        i = k * n + ev.choice
                        lp = None
                        if ev.tokens is not None:
                            lp = completion_logprobs(ev.tokens, self.piece, offsets.get(i, 0))
                            offsets[i] = offsets.get(i, 0) + len(ev.text)
                        yield _sse({**head, "choices": [_choice(i, ev.text, lp, None)]})
                    elif isinstance(ev, Finished):
                        completion_tokens += ev.n_tokens
                        yield _sse({**head, "choices": [_choice(k * n + ev.choice, "", None, ev.reason)]})
                if req.include_usage:
                    yield _sse(
                        {**head, "choices": [], "usage": usage(sum(len(p) for p, _ in prompts), completion_tokens)}
                    )
                yield b"data: [DONE]\n\n"

            return _stream_response(stream())

        chunks = {i: _Chunk() for i in range(len(prompts) * n)}
        echo_lp: dict[int, PromptLogprobs] = {}
        async for k, ev in self.events(request, jobs, queue, watch=True):
            _collect(chunks, echo_lp, k, n, ev)
        choices = []
        for i, ch in chunks.items():
            k = i // n
            text, lp = "".join(ch.text), None
            if req.logprobs is not None:
                prefix = echoed(k, echo_lp.get(k)) if req.echo else ("", None)
                body_lp = completion_logprobs(ch.tokens, self.piece, len(prefix[0]))
                lp = body_lp if prefix[1] is None else {f: prefix[1][f] + body_lp[f] for f in body_lp}
            if req.echo:
                text = texts[k] + text
            choices.append(_choice(i, text, lp, ch.reason))
        return {
            **head,
            "choices": choices,
            "usage": usage(sum(len(p) for p, _ in prompts), sum(c.n_tokens for c in chunks.values())),
        }

    # ---- chat ------------------------------------------------------------------------------
    async def chat_completions(self, request, body: dict):
        req = parse_chat(body, self.limits)
        self.check_model(body)
        self.generating()
        try:
            text = self.chat.render(req.messages)
        except LMForgeError as e:
            raise bad("messages", str(e).split(": ", 1)[-1]) from None
        ids, _ = self.encode(text, "messages")
        sampling = req.sampling
        if sampling.max_tokens < 0:  # not given: up to the end of the context
            room = self.context - (len(ids) if self.arch == "decoder" else 1)
            sampling = _replace(sampling, max_tokens=max(1, min(self.limits.max_tokens, room)))
        sampling = _replace(sampling, stop=sampling.stop + self.chat.stops)
        jobs, queue = self.submit([(ids, 0)], sampling, req.n, None)
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
        }
        n_prompt = len(ids)

        def lp_of(tokens):
            return chat_logprobs(tokens, self.piece) if req.logprobs is not None else None

        if req.stream:

            async def stream():
                completion_tokens = 0
                for c in range(req.n):
                    yield _sse({**head, "choices": [_delta(c, {"role": "assistant", "content": ""}, None, None)]})
                async for _, ev in self.events(request, jobs, queue, watch=False):
                    if isinstance(ev, Delta):
                        yield _sse(
                            {**head, "choices": [_delta(ev.choice, {"content": ev.text}, lp_of(ev.tokens or []), None)]}
                        )
                    elif isinstance(ev, Finished):
                        completion_tokens += ev.n_tokens
                        yield _sse({**head, "choices": [_delta(ev.choice, {}, None, ev.reason)]})
                if req.include_usage:
                    yield _sse({**head, "choices": [], "usage": usage(n_prompt, completion_tokens)})
                yield b"data: [DONE]\n\n"

            return _stream_response(stream())

        chunks = {c: _Chunk() for c in range(req.n)}
        async for k, ev in self.events(request, jobs, queue, watch=True):
            _collect(chunks, {}, k, req.n, ev)
        choices = [
            {
                "index": c,
                "message": {"role": "assistant", "content": "".join(ch.text)},
                "logprobs": lp_of(ch.tokens),
                "finish_reason": ch.reason,
            }
            for c, ch in chunks.items()
        ]
        return {
            **head,
            "object": "chat.completion",
            "choices": choices,
            "usage": usage(n_prompt, sum(ch.n_tokens for ch in chunks.values())),
        }

    # ---- tokenizer routes (lm-evaluation-harness's "remote" tokenizer) ----------------------
    def tokenize(self, body: dict) -> dict:
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            raise bad("prompt", "required: a string")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise bad("add_special_tokens", "expected true or false")
        ids = self.encode(prompt)[0] if special else self.tokenizer.encode(prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.context}

    def detokenize(self, body: dict) -> dict:
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab for t in ids
        ):
            raise bad("tokens", f"required: an array of token ids in [0, {self.vocab})")
        return {"prompt": self.tokenizer.decode(ids)}

    def tokenizer_info(self) -> dict:
        tok = self.tokenizer
        ids = {r: special_id(tok, r) for r in ("bos", "eos", "pad")}
        names = {r: tok.id_to_token(i) if i is not None else None for r, i in ids.items()}
        return {
            "tokenizer_class": "lmforge",
            "bos_token": names["bos"],
            "eos_token": names["eos"],
            "pad_token": names["pad"],
            "chat_template": self.chat.template_source,
            "model_max_length": self.context,
            "vocab_size": self.vocab,
        }

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "lmforge",
                    "max_model_len": self.context,
                }
            ],
        }


def _replace(s, **changes):
    import dataclasses

    return dataclasses.replace(s, **changes)


def _collect(chunks: dict, echo_lp: dict, k: int, n: int, ev) -> None:
    if isinstance(ev, PromptLogprobs):
        echo_lp[k] = ev
        return
    ch = chunks[k * n + ev.choice]
    if isinstance(ev, Delta):
        ch.text.append(ev.text)
        ch.tokens.extend(ev.tokens or [])
    elif isinstance(ev, Finished):
        ch.reason, ch.n_tokens = ev.reason, ev.n_tokens


def _choice(index: int, text: str, logprobs, reason) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}


def _delta(index: int, delta: dict, logprobs, reason) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


def _finite(o):
    """JSON has no infinities: a log P of -inf (a token the model rules out) is sent as -9999."""
    if isinstance(o, float):
        return max(o, -9999.0)
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def _dumps(o) -> bytes:
    return json.dumps(_finite(o), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _sse(o) -> bytes:
    return b"data: " + _dumps(o) + b"\n\n"


def _stream_response(gen):
    from fastapi.responses import StreamingResponse

    async def guarded():
        try:
            async for part in gen:
                yield part
        except APIError as e:  # the stream has started: the error goes in it, as OpenAI does
            yield _sse(e.body())
            yield b"data: [DONE]\n\n"

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
