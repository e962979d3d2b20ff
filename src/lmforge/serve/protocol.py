"""The OpenAI request and response shapes: parse and check request bodies, build responses.

Every check failure is an :class:`APIError` whose message names the field (``param``); the server
answers it as OpenAI does, ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.
Fields this server does not know are ignored; fields it knows but does not implement are
accepted at their neutral value only (``presence_penalty: 0``, ``logit_bias: {}``, ...).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lmforge.infer.options import SamplingOptions
from lmforge.serve.engine import SamplingParams, TokenLogprob

MAX_STOP = 4  # stop strings per request, as OpenAI
MAX_LOGPROBS = 20  # alternatives per position
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    """An error answered as OpenAI's error JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int  # new tokens per choice
    max_n: int  # choices per prompt
    max_prompts: int = 64  # prompts per completions request


@dataclass
class CompletionRequest:
    prompts: list  # each a str or a list of token ids
    sampling: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None  # alternatives per token (completions: the "logprobs" int)


@dataclass
class ChatRequest:
    messages: list[dict]  # {"role", "content": str}
    sampling: SamplingParams  # max_tokens -1: up to the end of the context
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # alternatives per token when "logprobs" is true ("top_logprobs")


class _Body:
    """Typed reads of a JSON object's fields; a missing or null field gives the default."""

    def __init__(self, obj):
        if not isinstance(obj, dict):
            raise APIError(400, f"body: expected a JSON object, got {_kind(obj)}", "body")
        self.obj = obj

    def has(self, name: str) -> bool:
        return self.obj.get(name) is not None

    def int(self, name: str, default, lo: int | None = None, hi: int | None = None):
        v = self.obj.get(name)
        if v is None:
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(name, f"expected an integer, got {_kind(v)}")
        if lo is not None and v < lo:
            raise bad(name, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise bad(name, f"must be <= {hi}, got {v}")
        return v

    def number(self, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
        v = self.obj.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(name, f"expected a number, got {_kind(v)}")
        if v < lo or (lo_open and v == lo) or v > hi:
            raise bad(name, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v:g}")
        return float(v)

    def bool(self, name: str, default: bool) -> bool:
        v = self.obj.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise bad(name, f"expected true or false, got {_kind(v)}")
        return v

    def neutral(self, name: str, *allowed) -> None:
        """A known OpenAI field this server does not implement: only its neutral values pass."""
        v = self.obj.get(name)
        if v is not None and v not in allowed:
            raise bad(name, f"not supported by this server (leave it out or use {allowed[0]!r})")


def _kind(v) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _stop(b: _Body) -> tuple[str, ...]:
    v = b.obj.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("stop", f"expected a string or an array of strings, got {_kind(v)}")
    if len(items) > MAX_STOP:
        raise bad("stop", f"at most {MAX_STOP} stop strings, got {len(items)}")
    if any(s == "" for s in items):
        raise bad("stop", "stop strings must not be empty")
    return tuple(items)


def _common(b: _Body, limits: Limits, max_tokens_field: str, default_max_tokens: int, min_tokens: int):
    """The fields completions and chat share: n, stream, sampling, and the unimplemented knobs."""
    for name in ("presence_penalty", "frequency_penalty"):
        b.neutral(name, 0, 0.0)
    b.neutral("logit_bias", {})
    n = b.int("n", 1, 1, limits.max_n)
    stream = b.bool("stream", False)
    include_usage = False
    opts = b.obj.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("stream_options", f"expected an object, got {_kind(opts)}")
        include_usage = _Body(opts).bool("include_usage", False)
    max_tokens = b.int(max_tokens_field, default_max_tokens, min_tokens)
    if max_tokens > limits.max_tokens:
        raise bad(max_tokens_field, f"at most {limits.max_tokens} on this server, got {max_tokens}")
    seed = b.int("seed", None, -(2**63), 2**63 - 1)
    options = SamplingOptions(
        max_new_tokens=max(max_tokens, 1),  # the request's own max_tokens (0: score only; -1: to the context) governs
        temperature=b.number("temperature", 1.0, 0.0, 2.0),
        top_p=b.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=max(b.int("top_k", 0, -1), 0),  # 0 and -1 both mean off
        seed=None if seed is None else seed % 2**63,  # OpenAI's seeds are any int64; lmforge draws from [0, 2**63)
    )
    sampling = SamplingParams(max_tokens, options, _stop(b))
    return n, stream, include_usage, sampling


def parse_completion(obj, limits: Limits, vocab_size: int) -> CompletionRequest:
    b = _Body(obj)
    prompts = _prompts(b.obj.get("prompt"), limits, vocab_size)
    b.neutral("suffix", "")
    n, stream, include_usage, sampling = _common(b, limits, "max_tokens", min(16, limits.max_tokens), 0)
    best_of = b.int("best_of", n, 1)
    if best_of != n:
        raise bad("best_of", f"not supported by this server unless equal to n ({n})")
    echo = b.bool("echo", False)
    logprobs = b.int("logprobs", None, 0, MAX_LOGPROBS)
    if sampling.max_tokens == 0 and not (echo and logprobs is not None):
        raise bad("max_tokens", "0 only scores the prompt: give echo: true with logprobs")
    if logprobs is not None:
        sampling = _with_logprobs(sampling, logprobs)
    return CompletionRequest(prompts, sampling, n, stream, include_usage, echo, logprobs)


def _prompts(v, limits: Limits, vocab_size: int) -> list:
    """A string, an array of strings, an array of token ids, or an array of such arrays."""
    if v is None:
        raise bad("prompt", "required (a string, an array of strings or an array of token ids)")
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not v:
        raise bad("prompt", f"expected a string or a non-empty array, got {_kind(v) if v != [] else 'an empty array'}")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        v = [v]
    if len(v) > limits.max_prompts:
        raise bad("prompt", f"at most {limits.max_prompts} prompts per request, got {len(v)}")
    out = []
    for p in v:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(not 0 <= t < vocab_size for t in p):
                raise bad("prompt", f"token ids must be in [0, {vocab_size}) (the model's vocabulary)")
            out.append(list(p))
        else:
            raise bad("prompt", "expected strings or non-empty arrays of integer token ids")
    return out


def _with_logprobs(s: SamplingParams, k: int) -> SamplingParams:
    return dataclasses.replace(s, logprobs=k)


def parse_chat(obj, limits: Limits) -> ChatRequest:
    b = _Body(obj)
    messages = _messages(b.obj.get("messages"))
    b.neutral("tools", [])
    b.neutral("functions", [])
    b.neutral("response_format", {"type": "text"})
    field = "max_completion_tokens" if b.has("max_completion_tokens") else "max_tokens"
    n, stream, include_usage, sampling = _common(b, limits, field, -1, 1)
    logprobs = None
    if b.bool("logprobs", False):
        logprobs = b.int("top_logprobs", 0, 0, MAX_LOGPROBS)
        sampling = _with_logprobs(sampling, logprobs)
    elif b.has("top_logprobs"):
        raise bad("top_logprobs", "needs logprobs: true")
    return ChatRequest(messages, sampling, n, stream, include_usage, logprobs)


def _messages(v) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise bad("messages", "required: a non-empty array of {role, content} objects")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"expected an object, got {_kind(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise bad(f"{where}.content", "only text parts ({type: text, text: ...}) are supported")
            content = "".join(p["text"] for p in content)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise bad(f"{where}.content", f"expected a string or an array of text parts, got {_kind(content)}")
        out.append({"role": role, "content": content})
    return out


# ----------------------------------------------------------------------------------------------
# Responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(tokens: list[TokenLogprob], piece, offset: int = 0) -> dict:
    """The completions ``logprobs`` object: token strings, their log P, the alternatives and each
    token's character offset in the text (counted from ``offset``). ``piece(id)`` is a token's text."""
    texts = [piece(t.id) for t in tokens]
    offsets = []
    for s in texts:
        offsets.append(offset)
        offset += len(s)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [None if t.logprob is None else {piece(i): v for i, v in t.top} for t in tokens],
        "text_offset": offsets,
    }


def chat_logprobs(tokens: list[TokenLogprob], piece) -> dict:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def entry(i: int, v: float) -> dict:
        s = piece(i)
        return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top]} for t in tokens]}
