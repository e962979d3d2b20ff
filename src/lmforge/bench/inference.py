"""Generation and scoring cases: lmforge vs HF transformers on the same random GPT-2 weights.

Generation is greedy with the KV cache (a 16-token prompt, 200 new tokens); the check is that the
tokens are identical, and the step time is printed as a multiple of the decode floor
(:func:`decode_floor`: the step's matrix products alone, in the fastest layout found). Scoring computes every token's log-probability of 32 x 256 tokens; the check
is the largest log-probability difference.
"""

from __future__ import annotations

import torch

from lmforge.bench.harness import CaseResult, run_case

SHAPE = dict(n_layer=6, n_embd=384, n_head=6, vocab_size=8192, n_positions=512)
SMOKE = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64)


def models(smoke: bool = False, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A random HF GPT-2 and its lmforge conversion (same weights), both on ``device`` in ``dtype``
    (the weights themselves: inference in bf16 casts them, as ``lmforge generate --dtype bf16`` does)."""
    import transformers

    from lmforge import device as dev
    from lmforge.interop import from_hf

    transformers.logging.set_verbosity_error()
    dev.configure_backends(torch.device(device))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**(SMOKE if smoke else SHAPE), bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    return from_hf(hf).eval().to(device, dtype), hf.to(device, dtype)


def _exact(model) -> bool:
    """fp32 on the CPU: the two libraries must agree exactly (in 16 bits, rounding may break argmax ties)."""
    p = next(model.parameters())
    return p.dtype == torch.float32 and p.device.type == "cpu"


def generation_case(
    ours, hf, batch: int, prompt_len: int = 16, new_tokens: int = 200, rounds: int = 5, peak: float | None = None
) -> CaseResult:
    from lmforge.accounting import count_flops
    from lmforge.infer import generate_ids

    device = next(hf.parameters()).device
    ids = torch.randint(
        0, ours.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(batch)
    ).to(device)
    mask = torch.ones_like(ids)

    def ours_fn():
        return generate_ids(ours, ids, max_new_tokens=new_tokens, do_sample=False, eos_id=None).tokens

    def hf_fn():
        with torch.inference_mode():
            return hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )[:, prompt_len:]

    agree = float((ours_fn() == hf_fn()).float().mean())
    if agree == 1.0:
        check = "identical tokens"
    else:  # in 16 bits a near-tie may round the other way, and the sequences part from there
        check = "TOKENS DIFFER" if _exact(ours) else f"{agree:.0%} of tokens equal"
    flops = count_flops(ours.config, prompt_len + new_tokens).forward_per_token
    return run_case(
        f"generate greedy, batch {batch}",
        "tokens",
        batch * new_tokens,
        ours_fn,
        hf_fn,
        rounds=rounds,
        flops_per_unit=flops,
        peak=peak,
        check=check,
    )


def floor_case(generation: CaseResult, model, batch: int) -> CaseResult:
    """lmforge's decode step (from a :func:`generation_case` of the same batch) against the
    weight-streaming floor measured now: ratio = floor time / step time (1.0 is the floor)."""
    floor = decode_floor(model, batch)
    step = batch / generation.ours_rate  # seconds per decode step (one token per row)
    return CaseResult(
        f"decode step vs matmul floor, batch {batch}",
        "steps",
        1 / step,
        1 / floor["seconds"],
        floor["seconds"] / step,
        check=f"step {1e3 * step:.2f} ms = {step / floor['seconds']:.2f}x the floor ({1e3 * floor['seconds']:.2f} ms, {floor['layout']})",
        notes={"reference": "the step's matrix products alone", "step_s": step, "floor_s": floor["seconds"]},
    )


def decode_floor(model, batch: int, steps: int = 50, rounds: int = 5) -> dict:
    """The weight-streaming floor of one decode step: the step's matrix products alone (every
    linear layer of the blocks and the head, on a (batch, in) input), no attention over the cache,
    norms, activations or Python around them, in the fastest of the layouts tried: the weights as
    stored (``F.linear``), pre-transposed (``x @ W``), and on a CPU as the left operand
    (``W @ x^T``) and re-laid out by oneDNN for ``batch`` rows. Median seconds per step."""
    import statistics
    import time

    import torch.nn.functional as F

    from lmforge.models.fast_decode import few_rows_linear, onednn_linear

    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    device, dtype = weights[0].device, weights[0].dtype
    inputs = [torch.randn(batch, w.shape[1], device=device, dtype=dtype) for w in weights]
    transposed = [w.t().contiguous() for w in weights]
    layouts = {
        "F.linear (out, in)": lambda: [F.linear(x, w) for x, w in zip(inputs, weights)],
        "x @ W (in, out)": lambda: [x @ w for x, w in zip(inputs, transposed)],
    }
    if device.type == "cpu":  # the layouts lmforge's CPU decode step itself chooses from
        layouts["W @ x^T"] = lambda: [few_rows_linear(x, w, None) for x, w in zip(inputs, weights)]
        packed = onednn_linear(weights, batch)
        if packed is not None:
            layouts["oneDNN blocked"] = lambda: [packed(x, w, None) for x, w in zip(inputs, weights)]
    best = None
    with torch.inference_mode():
        for name, step in layouts.items():
            step()  # warm-up
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append((time.perf_counter() - t0) / steps)
            t = statistics.median(times)
            if best is None or t < best["seconds"]:
                best = {"seconds": t, "layout": name}
    return best


def scoring_case(
    ours, hf, n_seq: int = 32, seq_len: int = 256, rounds: int = 5, peak: float | None = None
) -> CaseResult:
    from lmforge.accounting import count_flops
    from lmforge.infer import decoder_token_logprobs

    ids = torch.randint(0, ours.config.vocab_size, (n_seq, seq_len), generator=torch.Generator().manual_seed(99)).to(
        next(hf.parameters()).device
    )

    def ours_fn():
        return torch.stack(decoder_token_logprobs(ours, ids, batch_size=n_seq))

    def hf_fn():  # what an HF script does: logits, log-softmax, gather the next tokens
        with torch.inference_mode():
            logits = hf(ids).logits
            return logits.float().log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)

    diff = float((ours_fn().cpu() - hf_fn().cpu()).abs().max())
    flops = count_flops(ours.config, seq_len).forward_per_token
    return run_case(
        f"score {n_seq}x{seq_len}",
        "tokens",
        n_seq * seq_len,
        ours_fn,
        hf_fn,
        rounds=rounds,
        flops_per_unit=flops,
        peak=peak,
        check=f"max |dlogp| {diff:.1e}",
    )


# ----------------------------------------------------------------------------------------------
# int8 (``lmforge bench --int8``): int8 against lmforge fp32, on the CPU


def int8_generation_case(
    ours,
    batch: int,
    include_head: bool = True,
    prompt_len: int = 16,
    new_tokens: int = 200,
    rounds: int = 5,
    peak: float | None = None,
) -> CaseResult:
    """Greedy decoding of an int8 copy of ``ours`` (fp32, CPU) timed against ``ours`` itself: the
    ratio is int8 speed / fp32 speed; the check is the share of tokens equal to fp32's (random
    weights have small top-1 margins, so greedy paths may part)."""
    import copy

    from lmforge.accounting import count_flops
    from lmforge.infer import generate_ids
    from lmforge.models.quant import quantize_int8

    q = quantize_int8(copy.deepcopy(ours), include_head=include_head)
    ids = torch.randint(0, ours.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(batch))

    def decode(model):
        return lambda: generate_ids(model, ids, max_new_tokens=new_tokens, do_sample=False, eos_id=None).tokens

    agree = float((decode(q)() == decode(ours)()).float().mean())
    head = "" if include_head else " (fp32 head)"
    return run_case(
        f"generate greedy int8{head} vs fp32, batch {batch}",
        "tokens",
        batch * new_tokens,
        decode(q),
        decode(ours),
        rounds=rounds,
        flops_per_unit=count_flops(ours.config, prompt_len + new_tokens).forward_per_token,
        peak=peak,
        check=f"{agree:.0%} of tokens equal fp32",
        reference="lmforge fp32",
    )


def int8_scoring_case(
    ours, n_seq: int = 32, seq_len: int = 256, rounds: int = 5, peak: float | None = None
) -> CaseResult:
    """Scoring with an int8 copy of ``ours`` (fp32, CPU, head included) timed against ``ours``;
    the check is the largest and the mean log-probability difference (the mean, over ln 2, is the
    change in bits per token)."""
    import copy

    from lmforge.accounting import count_flops
    from lmforge.infer import decoder_token_logprobs
    from lmforge.models.quant import quantize_int8

    q = quantize_int8(copy.deepcopy(ours))
    ids = torch.randint(0, ours.config.vocab_size, (n_seq, seq_len), generator=torch.Generator().manual_seed(99))

    def scored(model):
        return lambda: torch.stack(decoder_token_logprobs(model, ids, batch_size=n_seq))

    diff = scored(q)() - scored(ours)()
    return run_case(
        f"score int8 vs fp32 {n_seq}x{seq_len}",
        "tokens",
        n_seq * seq_len,
        scored(q),
        scored(ours),
        rounds=rounds,
        flops_per_unit=count_flops(ours.config, seq_len).forward_per_token,
        peak=peak,
        check=f"max |dlogp| {float(diff.abs().max()):.1e}, mean dlogp {float(diff.mean()):+.1e}",
        reference="lmforge fp32",
    )
