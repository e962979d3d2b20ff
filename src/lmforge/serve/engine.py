"""Continuous batching: one scheduler thread keeps a running batch of sequences on a KV cache.

The cache has ``max_batch`` *slots* (rows), each ``max_positions`` long. A request (a :class:`Job`:
one prompt, ``n`` choices) waits until ``n`` slots are free, then *joins*: its prompt runs alone
(the prefill), its keys and values are copied into its slots, and its first token is chosen. From
then on every decode step feeds the last token of every running row at that row's own position
and writes its keys and values at that position of its own slot; a row leaves (its slot is free
for the next request) when it ends: EOS, a stop string, ``max_tokens``, the end of the context, or
a cancel (a client that went away). Requests that arrive mid-decode join before the next step.

**Batch invariance.** A decode step always has the same shapes: all ``max_batch`` rows (free
slots compute a dummy token) and attention over the whole slot under a per-row mask. A row's
arithmetic then does not depend on which other rows are running or where they are: the matrix
products, norms and attention of one row never mix values of another, and with fixed shapes the
kernels and their summation order are fixed too. So a greedy request gives exactly the tokens
(and log-probabilities, bit for bit) it gives alone on the server, and a seeded sampled one draws
the same tokens, whatever else is in the batch. The price: a step costs the same at one request
as at ``max_batch``. (Compared with ``lmforge generate`` on the same prompt the tokens agree too,
up to float rounding: that loop sums in a different order, so a near-tie of two logits could
break the other way.)

Each request samples with its own settings (temperature, top-k, top-p, in that order) through the
chooser :func:`lmforge.generate` uses (:class:`~lmforge.infer.sampling.TokenChooser`), from its own
``torch.Generator`` seeded with its ``seed``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmforge.errors import LMForgeError
from lmforge.infer.generate import TextTracker
from lmforge.infer.options import SamplingOptions
from lmforge.infer.sampling import TokenChooser, make_generator
from lmforge.tokenizer import special_id

log = logging.getLogger("lmforge.serve")


class EngineBusy(LMForgeError):
    """Too many requests are already waiting for a batch slot."""


@dataclass(frozen=True)
class SamplingParams:
    """One request's generation: how many tokens, how they are drawn (the library's
    :class:`~lmforge.infer.SamplingOptions`, as ``lmforge.generate`` and the CLI take them: temperature,
    top-k, top-p, seed), when a choice stops and what it reports."""

    max_tokens: int = 16  # new tokens at most; 0: the prompt's log-probabilities only
    options: SamplingOptions = SamplingOptions()
    stop: tuple[str, ...] = ()  # strings that end a choice (not included in its text)
    logprobs: int | None = None  # report log P of each generated token and this many alternatives


@dataclass
class TokenLogprob:
    """One token and its log-probability under the model (before temperature / top-k / top-p)."""

    id: int
    logprob: float | None  # None: the first prompt token when nothing precedes it
    top: list[tuple[int, float]]  # the most likely alternatives at this position, best first


# What a job's sink receives, from the engine thread, as a list per step.
@dataclass
class PromptLogprobs:
    tokens: list[TokenLogprob]  # one per prompt token


@dataclass
class Delta:
    choice: int
    text: str  # new final text (held back while it could still become a stop string)
    tokens: list[TokenLogprob] | None  # the step's token, when log-probabilities were asked for


@dataclass
class Finished:
    choice: int
    reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens or the context)
    n_tokens: int  # tokens generated


@dataclass
class Failed:
    message: str


Event = PromptLogprobs | Delta | Finished | Failed


class Job:
    """One prompt's generation: ``n`` choices with the same settings. ``sink(events)`` is called
    from the engine thread; ``prompt_logprobs`` (an int: alternatives per position) asks for the
    log-probability of every prompt token first (the OpenAI ``echo`` with ``logprobs``)."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Callable[[list[Event]], None],
        n: int = 1,
        prompt_logprobs: int | None = None,
    ):
        self.prompt_ids, self.params, self.sink, self.n = list(prompt_ids), params, sink, n
        self.prompt_logprobs = prompt_logprobs
        self.cancelled = False  # set by the consumer (client gone) or on failure; rows leave at the next step
        self.chooser: TokenChooser | None = None  # sampling (temperature > 0): the settings and seeded generator

    @property
    def slots_needed(self) -> int:
        return self.n if self.params.max_tokens > 0 else 0

    def cancel(self) -> None:
        self.cancelled = True


class _Row:
    """One running choice of a job, in one slot."""

    __slots__ = ("choice", "job", "last", "length", "n_tokens", "slot", "tracker")

    def __init__(self, job: Job, choice: int, slot: int, tracker: TextTracker, length: int):
        self.job, self.choice, self.slot, self.tracker = job, choice, slot, tracker
        self.n_tokens = 0  # generated so far
        self.length = length  # positions in its slot's cache
        self.last = 0  # the token to feed at the next step


class _SlotCache:
    """Keys and values of ``rows`` slots, each written at its own position: what the model's
    attention layers see as their cache (``update``, and ``cross`` for an encoder-decoder)."""

    def __init__(
        self,
        n_layer: int,
        rows: int,
        n_kv_head: int,
        head_dim: int,
        length: int,
        cross_length: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (n_layer, rows, n_kv_head, length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.all_rows = torch.arange(rows, device=device)
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        if cross_length:
            xshape = (n_layer, rows, n_kv_head, cross_length, head_dim)
            self.cross_k = torch.zeros(xshape, dtype=dtype, device=device)
            self.cross_v = torch.zeros(xshape, dtype=dtype, device=device)
        self.view(rows, length, torch.zeros(rows, dtype=torch.long, device=device))

    def view(self, rows: int, length: int, pos: torch.Tensor) -> None:
        """This step's part: the first ``rows`` slots, the first ``length`` positions; ``pos`` (rows,)
        is where each row writes."""
        self.rows, self.length, self.pos = self.all_rows[:rows], length, pos
        if hasattr(self, "cross_k"):
            self.cross = [(self.cross_k[i, :rows], self.cross_v[i, :rows]) for i in range(self.cross_k.shape[0])]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, K, 1, D) new keys / values -> all of them, (rows, K, length, D)."""
        kl, vl = self.k[layer, : len(self.rows)], self.v[layer, : len(self.rows)]
        kl[self.rows, :, self.pos] = k[:, :, 0]
        vl[self.rows, :, self.pos] = v[:, :, 0]
        return kl[:, :, : self.length], vl[:, :, : self.length]


class Engine:
    """The continuous-batching scheduler of one model (decoder or encoder-decoder).

    ``submit(job)`` queues a job (thread-safe); ``start()`` / ``close()`` run and stop the thread.
    ``max_waiting`` jobs at most wait for slots (:class:`EngineBusy` beyond). ``batch_invariant=False``
    runs each step on the slots up to the last running one and the positions up to the longest
    row: cheaper when few requests run, but a row's float rounding then depends on the batch.
    """

    def __init__(self, model, tokenizer, max_batch: int = 8, max_waiting: int = 256, batch_invariant: bool = True):
        cfg = getattr(model, "config", None)
        if getattr(cfg, "arch", None) not in ("decoder", "encoder-decoder"):
            raise LMForgeError(
                "serving generates text: it needs a decoder or an encoder-decoder "
                "(an encoder answers fill-mask: lmforge fill-mask MODEL_DIR TEXT)"
            )
        if max_batch < 1:
            raise LMForgeError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch, self.max_waiting = model.eval(), tokenizer, max_batch, max_waiting
        self.batch_invariant = batch_invariant
        self.arch, self.context = cfg.arch, cfg.max_positions
        self.eos = special_id(tokenizer, "eos", cfg)
        param = next(model.parameters())
        self.device = param.device
        self._stack = model.transformer if self.arch == "decoder" else model.decoder
        self._cache = _SlotCache(
            len(self._stack.blocks),
            max_batch,
            cfg.kv_heads,
            cfg.head_dim,
            self.context,
            self.context if self.arch == "encoder-decoder" else 0,
            param.dtype,
            self.device,
        )
        self._cols = torch.arange(self.context, device=self.device)
        if self.arch == "encoder-decoder":
            self._src_valid = torch.zeros(max_batch, self.context, dtype=torch.bool, device=self.device)
            self._src_valid[:, 0] = True  # free rows attend somewhere (no all-masked row, no NaN)
            self._context_mask = self._src_valid[:, None, None, :]  # a view: per-slot updates show through
            # cross-attention reads its keys / values from the cache; the blocks only need to know it is there
            self._context = torch.empty(max_batch, 0, cfg.d_model, dtype=param.dtype, device=self.device)
        else:
            self._context = self._context_mask = None
        self._rows: list[_Row | None] = [None] * max_batch
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "steps": 0, "tokens": 0}

    # ---- control (any thread) --------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmforge-serve-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; jobs still waiting or running get :class:`Failed`."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def check(self, n_prompt: int, max_tokens: int, n: int = 1) -> None:
        """Refuse (:class:`~lmforge.errors.LMForgeError`) what cannot run: more choices than slots, an
        empty prompt, or a prompt + ``max_tokens`` beyond the context (the message has both numbers)."""
        if n > self.max_batch:
            raise LMForgeError(f"n: {n} choices need {n} batch slots; this server has --max-batch {self.max_batch}")
        if n_prompt < 1:
            raise LMForgeError("prompt: empty; give at least one token")
        if self.arch == "decoder" and n_prompt + max_tokens > self.context:
            raise LMForgeError(
                f"prompt: {n_prompt} prompt tokens + max_tokens {max_tokens} = {n_prompt + max_tokens} "
                f"exceeds the model's context of {self.context} tokens; shorten the prompt or lower "
                f"max_tokens"
            )
        if self.arch == "encoder-decoder" and (n_prompt > self.context or 1 + max_tokens > self.context):
            raise LMForgeError(
                f"prompt: a source of {n_prompt} tokens and max_tokens {max_tokens} (+ 1 start token) "
                f"must each fit the model's context of {self.context} tokens"
            )

    def submit(self, job: Job) -> None:
        self.check(len(job.prompt_ids), job.params.max_tokens, job.n)
        with self._cv:
            if self._closing:
                raise EngineBusy("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting; try again later")
            self._waiting.append(job)
            self._cv.notify_all()

    def stats(self) -> dict:
        with self._cv:
            running = sum(r is not None for r in self._rows)
            return {"running": running, "waiting": len(self._waiting), "slots": self.max_batch, **self.counts}

    # ---- the scheduler thread --------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._closing and not self._waiting and not any(self._rows):
                        self._cv.wait()
                    if self._closing:
                        break
                    joining = self._take_joining()
                for job in joining:
                    self._join(job)
                self._drop_cancelled()
                if any(self._rows):
                    try:
                        self._step()
                    except Exception as e:  # a failed batched step fails the rows in it, not the server
                        log.exception("decode step failed")
                        for job in {id(r.job): r.job for r in self._rows if r is not None}.values():
                            self._fail(job, e)
        with self._cv:
            left = list(self._waiting) + [r.job for r in self._rows if r is not None]
            self._waiting.clear()
        for job in {id(j): j for j in left}.values():
            self._fail(job, LMForgeError("the server is shutting down"))

    def _take_joining(self) -> list[Job]:
        """Jobs from the head of the queue whose choices fit the free slots (first come, first served)."""
        free = sum(r is None for r in self._rows)
        joining = []
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                self.counts["cancelled"] += 1
                continue
            if job.slots_needed > free:
                break
            free -= job.slots_needed
            joining.append(self._waiting.popleft())
        return joining

    def _join(self, job: Job) -> None:
        free = [i for i, r in enumerate(self._rows) if r is None][: job.slots_needed]
        try:
            o = job.params.options
            if o.temperature > 0:
                job.chooser = TokenChooser.from_options(o, make_generator(o.seed, self.device))
            logits = self._prefill(job, free)
            if not free:  # max_tokens 0: the prompt's log-probabilities only
                self._send(job, [Finished(c, "length", 0) for c in range(job.n)])
                self.counts["completed"] += 1
                return
            length = len(job.prompt_ids) if self.arch == "decoder" else 1
            rows = [
                _Row(job, c, s, TextTracker(self.tokenizer, job.params.stop, self.eos), length)
                for c, s in enumerate(free)
            ]
            for r in rows:
                self._rows[r.slot] = r
            self._advance(rows, logits.expand(len(rows), -1))
        except Exception as e:
            log.exception("a request failed to join the batch")
            self._fail(job, e)

    def _prefill(self, job: Job, slots: list[int]) -> torch.Tensor:
        """Run the prompt alone, copy its keys / values into ``slots``; the last position's logits."""
        model, ids = self.model, torch.tensor([job.prompt_ids], dtype=torch.long, device=self.device)
        P = ids.shape[1]
        if self.arch == "decoder":
            cache = model.new_cache(1, P) if slots else None
            logits = model(ids, cache=cache, last_only=job.prompt_logprobs is None).logits[0]  # (P or 1, V)
            if job.prompt_logprobs is not None:
                self._send(job, [PromptLogprobs(self._prompt_logprobs(job.prompt_ids, logits, job.prompt_logprobs))])
            for s in slots:
                self._cache.k[:, s, :, :P] = cache.k[:, 0]
                self._cache.v[:, s, :, :P] = cache.v[:, 0]
            return logits[-1]
        cache = model.new_cache(1, 1)
        start = model.shift_right(ids.new_zeros(1, 1))  # (1, 1): the decoder's start token
        logits = model(input_ids=ids, decoder_input_ids=start, cache=cache, last_only=True).logits[0, -1]
        for s in slots:
            self._cache.k[:, s, :, :1] = cache.k[:, 0]
            self._cache.v[:, s, :, :1] = cache.v[:, 0]
            for i, (ck, cv) in enumerate(cache.cross):
                self._cache.cross_k[i, s, :, :P] = ck[0]
                self._cache.cross_v[i, s, :, :P] = cv[0]
            self._src_valid[s] = self._cols < P
        return logits

    @staticmethod
    def _prompt_logprobs(ids: list[int], logits: torch.Tensor, k: int) -> list[TokenLogprob]:
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)  # position t predicts token t + 1
        target = torch.tensor(ids[1:], device=lp.device)
        chosen = lp.gather(1, target[:, None])[:, 0].tolist()
        top = _top(lp, k)
        return [TokenLogprob(ids[0], None, [])] + [TokenLogprob(t, c, a) for t, c, a in zip(ids[1:], chosen, top)]

    def _step(self) -> None:
        rows = [r for r in self._rows if r is not None]
        if self.batch_invariant:
            width, length = self.max_batch, self.context
        else:  # just the slots up to the last running one, the positions up to the longest row
            width, length = max(r.slot for r in rows) + 1, max(r.length for r in rows) + 1
        tokens, pos = [0] * width, [0] * width
        for r in rows:
            tokens[r.slot], pos[r.slot] = r.last, r.length
        logits = self._decode(torch.tensor(tokens, device=self.device), torch.tensor(pos, device=self.device), length)
        for r in rows:
            r.length += 1
        self.counts["steps"] += 1
        self._advance(rows, logits[torch.tensor([r.slot for r in rows], device=self.device)])

    def _decode(self, tokens: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        """One token per slot (the first ``len(tokens)`` slots) at per-slot positions, attending to
        the first ``length`` positions -> (rows, V) logits, through the model's own blocks."""
        stack, W = self._stack, tokens.shape[0]
        self._cache.view(W, length, pos)
        mask = (self._cols[None, :length] <= pos[:, None])[:, None, None, :]  # (W, 1, 1, S): its own filled part
        context = context_mask = None
        if self.arch == "encoder-decoder":
            context, context_mask = self._context[:W], self._context_mask[:W]
        x, rope = stack.embed(tokens[:, None], pos[:, None])
        for i, block in enumerate(stack.blocks):
            x, _, _ = block(x, mask, False, rope, self._cache, i, context, context_mask)
        if stack.norm_f is not None:
            x = stack.norm_f(x)
        return self.model.lm_head(x[:, 0])

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its (V,) logits, hand out text, end finished rows."""
        chosen = logits.argmax(dim=-1)
        for i, r in enumerate(rows):
            if r.job.chooser is not None:
                chosen[i] = r.job.chooser(logits[i : i + 1])[0]
        want = [r.job.params.logprobs for r in rows]
        lps: list[TokenLogprob | None] = [None] * len(rows)
        if any(w is not None for w in want):
            lp = torch.log_softmax(logits.float(), dim=-1)
            values = lp.gather(1, chosen[:, None])[:, 0].tolist()
            top = _top(lp, max(w or 0 for w in want))
            lps = [None if w is None else TokenLogprob(0, v, t[:w]) for w, v, t in zip(want, values, top)]
        events: dict[int, tuple[Job, list[Event]]] = {}
        for r, tok, lp in zip(rows, chosen.tolist(), lps):
            if r.job.cancelled:
                continue
            try:
                out = events.setdefault(id(r.job), (r.job, []))[1]
                out.extend(self._take_token(r, tok, lp))
            except Exception as e:
                log.exception("a request failed")
                self._fail(r.job, e)
        for job, evs in events.values():
            if evs and not job.cancelled:
                self._send(job, evs)

    def _take_token(self, r: _Row, tok: int, lp: TokenLogprob | None) -> list[Event]:
        r.n_tokens += 1
        self.counts["tokens"] += 1
        r.last = tok
        if lp is not None:
            lp.id = tok
        text = r.tracker.add(tok)
        reason = None
        if r.tracker.stopped:
            reason = "stop"
        elif r.n_tokens >= r.job.params.max_tokens or r.length >= self.context:
            reason, text = "length", text + r.tracker.flush()
        out: list[Event] = []
        if text or lp is not None:
            out.append(Delta(r.choice, text, None if lp is None else [lp]))
        if reason is not None:
            out.append(Finished(r.choice, reason, r.n_tokens))
            self._leave(r)
        return out

    def _free(self, slot: int) -> None:
        self._rows[slot] = None
        if self.arch == "encoder-decoder":
            self._src_valid[slot] = self._cols == 0

    def _leave(self, r: _Row) -> None:
        self._free(r.slot)
        if not any(x is not None and x.job is r.job for x in self._rows):
            self.counts["completed"] += 1

    def _drop_cancelled(self) -> None:
        gone = {id(r.job) for r in self._rows if r is not None and r.job.cancelled}
        for r in self._rows:
            if r is not None and id(r.job) in gone:
                self._free(r.slot)
        self.counts["cancelled"] += len(gone)

    def _send(self, job: Job, events: list[Event]) -> None:
        try:
            job.sink(events)
        except Exception:  # the consumer is gone (or broken): drop the job, keep the others
            log.exception("a request's consumer failed; cancelling it")
            job.cancel()

    def _fail(self, job: Job, error: Exception) -> None:
        if not job.cancelled:
            job.cancel()
            self.counts["failed"] += 1
            self._send(job, [Failed(str(error) or type(error).__name__)])
        for r in self._rows:
            if r is not None and r.job is job:
                self._free(r.slot)


def _top(lp: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """The k most likely (token, log P) of each row of (R, V) log-probabilities."""
    if k <= 0:
        return [[] for _ in range(lp.shape[0])]
    v, i = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return [list(zip(ii, vv)) for ii, vv in zip(i.tolist(), v.tolist())]
