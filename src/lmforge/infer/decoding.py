"""The decoding loops: greedy / sampling (:func:`sample_loop`) and beam search
(:func:`beam_search_loop`), behind :func:`generate_ids` (tensors in, tensors out).

:func:`generate_ids` takes a (B, P) batch of prompt ids (left-padded for a decoder, with its
attention mask; the source for an encoder-decoder), builds the :mod:`stepper
<lmforge.infer.steppers>` of the model's family and the :class:`~lmforge.infer.sampling.TokenChooser`,
and returns (B, N) new token ids. Beam search keeps ``num_beams`` hypotheses by summed
log-probability; a finished hypothesis (EOS, or the length limit) scores
``sum logprob / generated_len ** length_penalty``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmforge.errors import LMForgeError
from lmforge.infer.options import options_from
from lmforge.infer.prompts import model_arch
from lmforge.infer.results import GenerateOutput
from lmforge.infer.sampling import TokenChooser, make_generator
from lmforge.infer.steppers import DecoderStepper, Seq2SeqStepper, Stepper
from lmforge.nn import eval_mode


def _resolve_special(value, cfg_value):
    return cfg_value if isinstance(value, str) and value == "config" else value


@torch.inference_mode()
def generate_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    beam_search: bool | None = None,
    eos_id: int | None | str = "config",
    pad_id: int | None | str = "config",
    decoder_start_id: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    fast: bool = True,
    callback: Callable[[int, torch.Tensor], torch.Tensor | Sequence[bool] | None] | None = None,
    output_logprobs: bool = False,
    check_every: int | None = None,
) -> GenerateOutput:
    """Generate up to ``max_new_tokens`` tokens after each prompt row.

    ``input_ids`` (B, P): for a decoder the prompts, left-padded, with ``attention_mask`` (1 = real
    token); for an encoder-decoder the sources (any padding side) and their mask.
    ``do_sample`` None means: sample when ``temperature > 0``; ``temperature=0`` or
    ``do_sample=False`` is greedy. ``num_beams > 1`` is beam search (deterministic; ``beam_search=True``
    forces the beam code path even at width 1, where it equals greedy).
    ``eos_id`` / ``pad_id`` default to the model config's ("config"); None disables EOS.
    ``callback(step, tokens)`` sees each step's (B,) tokens and may return a (B,) bool of rows to
    stop (stop strings). ``check_every``: steps between "all finished?" checks (a host sync);
    default 1 on CPU, 8 on an accelerator. ``fast``: decode steps of a stock decoder skip module
    dispatch (the same operations; False runs ``model.forward`` every step).
    """
    arch = model_arch(model)
    if arch == "encoder":
        raise LMForgeError("an encoder (masked LM) does not generate left to right; use fill-mask instead")
    if arch == "xlnet":
        raise LMForgeError("lmforge's XLNet scores (lmforge score) but has no generation loop; use a decoder")
    if input_ids.dim() != 2:
        raise LMForgeError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise LMForgeError("empty prompt: give at least one token (e.g. a BOS token)")
    cfg = model.config
    options_from(locals()).check_model(cfg.vocab_size)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    eos = _resolve_special(eos_id, cfg.eos_id)
    pad = _resolve_special(pad_id, cfg.pad_id)
    if pad is None:
        pad = eos if eos is not None else 0
    if do_sample is None:
        do_sample = temperature > 0
    if do_sample and temperature == 0:
        do_sample = False
    if do_sample and generator is None:
        generator = make_generator(seed, device)
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8

    with eval_mode(model):
        if arch == "decoder":
            stepper = DecoderStepper(model, input_ids, attention_mask, max_new_tokens, use_cache, fast)
            seen_ids, seen_mask = input_ids, (stepper.mask[:, : stepper.P] if stepper.padded else None)
        else:
            start = decoder_start_id if decoder_start_id is not None else cfg.decoder_start_id
            if start is None:
                start = cfg.bos_id if cfg.bos_id is not None else 0
            stepper = Seq2SeqStepper(model, input_ids, attention_mask, max_new_tokens, use_cache, start)
            seen_ids, seen_mask = stepper.start_tokens(), None
        chooser = TokenChooser(do_sample, temperature, top_k, top_p, repetition_penalty, generator)
        chooser.init_present(seen_ids, seen_mask, cfg.vocab_size)
        if beam_search or (beam_search is None and num_beams > 1):
            return beam_search_loop(
                stepper, chooser, input_ids.shape[0], num_beams, max_new_tokens, eos, pad, length_penalty
            )
        return sample_loop(
            stepper,
            chooser,
            input_ids.shape[0],
            max_new_tokens,
            eos,
            pad,
            callback,
            output_logprobs,
            check_every,
            device,
        )


def sample_loop(
    stepper: Stepper,
    chooser: TokenChooser,
    B: int,
    max_new: int,
    eos: int | None,
    pad: int,
    callback,
    output_logprobs: bool,
    check_every: int,
    device,
) -> GenerateOutput:
    """Greedy or sampled decoding, one token per row and step; rows end at EOS or when
    ``callback`` says so (stop strings), the loop when every row has ended."""
    out = torch.full((B, max_new), pad, dtype=torch.long, device=device)
    lps = torch.zeros(B, max_new, device=device) if output_logprobs else None
    track = eos is not None or callback is not None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    logits = stepper.prefill()
    n = 0
    for i in range(max_new):
        nxt = chooser(logits)
        if output_logprobs:
            lps[:, i] = torch.log_softmax(logits.float(), dim=-1).gather(1, nxt[:, None]).squeeze(1)
        if track:
            nxt = nxt.masked_fill(finished, pad)
            lengths += ~finished
            if eos is not None:
                finished |= nxt == eos
        out[:, i] = nxt
        n = i + 1
        if callback is not None:
            stop = callback(i, nxt)
            if stop is not None:
                finished |= torch.as_tensor(stop, dtype=torch.bool, device=device)
        if i == max_new - 1:
            break
        if track and (callback is not None or (i + 1) % check_every == 0) and bool(finished.all()):
            break
        chooser.note(nxt)
        logits = stepper.step(nxt)
    if not track:
        lengths.fill_(n)
    return GenerateOutput(out[:, :n], lengths, lps[:, :n] if lps is not None else None, finished=finished)


def beam_search_loop(
    stepper: Stepper,
    chooser: TokenChooser,
    B: int,
    W: int,
    max_new: int,
    eos: int | None,
    pad: int,
    length_penalty: float,
) -> GenerateOutput:
    """Beam search with HF's bookkeeping: keep the top 2W continuations of all W beams by summed
    log-probability; those among the top W that end in EOS become finished hypotheses (score
    normalised by generated length ** length_penalty); the best W others keep running. An item is
    done when it holds W finished hypotheses and the best running beam cannot beat the worst of them
    (HF ``early_stopping=False``). At the length limit the running beams are finished too."""
    device = stepper.device
    logits = stepper.prefill()  # (B, V): the prompt is run once, then each row repeated W times
    stepper.expand(W)
    chooser.reorder(torch.arange(B, device=device).repeat_interleave(W))
    logits = logits.repeat_interleave(W, dim=0)
    V = logits.shape[-1]
    beam_scores = torch.full((B, W), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # identical beams at the start: only the first may expand
    seqs = torch.full((B, W, max_new), pad, dtype=torch.long, device=device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    offsets = torch.arange(B, device=device)[:, None] * W
    for step in range(max_new):
        gen_len = step + 1
        logp = chooser.process(torch.log_softmax(logits.float(), dim=-1))  # (B*W, V)
        total = (logp.view(B, W, V) + beam_scores[:, :, None]).view(B, W * V)
        top_scores, top_idx = torch.topk(total, 2 * W, dim=-1)  # (B, 2W)
        top_beam, top_tok = top_idx // V, top_idx % V
        last = step == max_new - 1
        ts, tb, tt = top_scores.tolist(), top_beam.tolist(), top_tok.tolist()
        new_beam = torch.zeros(B, W, dtype=torch.long)
        new_tok = torch.full((B, W), pad, dtype=torch.long)
        new_score = torch.full((B, W), float("-inf"))
        for b in range(B):
            if done[b]:
                new_score[b] = 0.0  # keep it alive (ignored) so the tensors stay well defined
                continue
            k = 0
            for rank in range(2 * W):
                s, beam, tok = ts[b][rank], tb[b][rank], tt[b][rank]
                if s == float("-inf"):
                    break
                if eos is not None and tok == eos:
                    if rank < W:  # only the top W may finish (HF)
                        hyp = seqs[b, beam, :gen_len].clone()
                        hyp[step] = tok
                        finished[b].append((s / gen_len**length_penalty, hyp))
                    continue
                if k < W:
                    new_beam[b, k], new_tok[b, k], new_score[b, k] = beam, tok, s
                    k += 1
                if k == W:
                    break
            finished[b].sort(key=lambda h: -h[0])
            del finished[b][W:]
            if len(finished[b]) == W and k > 0:
                best_running = float(new_score[b, 0]) / gen_len**length_penalty
                if finished[b][-1][0] >= best_running:
                    done[b] = True
        if last or all(done):
            break
        new_beam, new_tok, new_score = new_beam.to(device), new_tok.to(device), new_score.to(device)
        flat = (new_beam + offsets).view(-1)
        seqs = seqs.view(B * W, max_new).index_select(0, flat).view(B, W, max_new)
        seqs[:, :, step] = new_tok
        beam_scores = new_score
        stepper.reorder(flat)
        chooser.reorder(flat)
        nxt = new_tok.view(-1)
        chooser.note(nxt)
        logits = stepper.step(nxt)
    # Finish: running beams of unfinished items compete with their finished hypotheses.
    n_steps = step + 1
    if not all(done):
        if last:  # the length limit: candidates of this last step end here
            for b in range(B):
                if done[b]:
                    continue
                for rank in range(W):
                    s, beam, tok = ts[b][rank], tb[b][rank], tt[b][rank]
                    if s == float("-inf") or (eos is not None and tok == eos):
                        continue  # EOS candidates were added above
                    hyp = seqs[b, beam, :n_steps].clone()
                    hyp[step] = tok
                    finished[b].append((s / n_steps**length_penalty, hyp))
    tokens = torch.full((B, n_steps), pad, dtype=torch.long, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    scores = torch.zeros(B, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    for b in range(B):
        score, hyp = max(finished[b], key=lambda h: h[0])
        tokens[b, : len(hyp)] = hyp
        lengths[b] = len(hyp)
        scores[b] = score
        ended[b] = eos is not None and int(hyp[-1]) == eos
    return GenerateOutput(tokens, lengths, None, scores, ended)
