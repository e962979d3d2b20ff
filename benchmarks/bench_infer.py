"""Inference throughput: lmforge vs HF transformers on the same GPT-2 weights.

A random HF ``GPT2LMHeadModel`` at the "small" shape (6 layers, 384 wide, 6 heads, vocabulary 8192)
is converted to lmforge, so both run the very same weights and their outputs can be compared:

- generation: 16-token prompts, 200 new tokens, greedy, KV cache, batch 1 and 8
  (lmforge ``generate_ids`` vs HF ``model.generate``); the tokens must be identical;
- scoring: 32 sequences x 256 tokens, per-token log-probabilities (lmforge
  ``decoder_token_logprobs`` vs HF forward + log_softmax + gather); they must agree within 1e-4.

Rounds are interleaved (the order alternates) after a warm-up; medians and ratios are printed.
Not a test: run ``python benchmarks/bench_infer.py [--device cuda] [--rounds 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter


def timed(fn, device):
    sync(device)
    t0 = CLOCK()
    out = fn()
    sync(device)
    return CLOCK() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per case (after one warm-up)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batches", default="1,8", help="generation batch sizes")
    ap.add_argument("--score-batch", type=int, default=32)
    ap.add_argument("--score-len", type=int, default=256)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time (default); cpu: this process's CPU time, steadier on a busy shared "
                         "machine (use with --threads 1 on a CPU)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    from lmforge.infer import decoder_token_logprobs, generate_ids
    from lmforge.interop.hf import from_hf

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides, so outputs can be compared
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=6, n_embd=384, n_head=6, vocab_size=8192, n_positions=512,
                                  bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ours = from_hf(hf).eval().to(device)
    hf = hf.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: GPT-2 6 layers x 384, 6 heads, vocab 8192 (random weights, fp32); {args.rounds} rounds, "
          f"{args.clock} clock")
    results: dict = {"device": name, "cases": {}}

    def run_case(fns, rounds):
        times = {k: [] for k in fns}
        outs = {}
        for k, fn in fns.items():  # warm-up
            _, outs[k] = timed(fn, device)
        order = list(fns)
        for r in range(rounds):
            for k in (order if r % 2 == 0 else order[::-1]):
                dt, outs[k] = timed(fns[k], device)
                times[k].append(dt)
        med = {k: statistics.median(v) for k, v in times.items()}
        return med, times, outs

    # ---- generation ------------------------------------------------------------------------
    N, P = args.new_tokens, args.prompt_len
    for B in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator().manual_seed(B)
        ids = torch.randint(0, cfg.vocab_size, (B, P), generator=g).to(device)
        mask = torch.ones_like(ids)

        def ours_fn():
            return generate_ids(ours, ids, max_new_tokens=N, do_sample=False, eos_id=None).tokens

        def hf_fn():
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                   pad_token_id=0)[:, P:]

        med, times, outs = run_case({"lmforge": ours_fn, "hf": hf_fn}, args.rounds)
        same = bool(torch.equal(outs["lmforge"].cpu(), outs["hf"].cpu()))
        # log-probabilities of the chosen tokens, outside the timed runs
        lp = generate_ids(ours, ids, max_new_tokens=N, do_sample=False, eos_id=None, output_logprobs=True).logprobs
        with torch.inference_mode():
            h = hf.generate(ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                            pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        hf_lp = torch.stack([x.float().log_softmax(-1) for x in h.logits], 1)
        hf_lp = hf_lp.gather(2, h.sequences[:, P:, None]).squeeze(2)
        lp_diff = float((hf_lp - lp).abs().max())
        tps = {k: B * N / v for k, v in med.items()}
        ratio = tps["lmforge"] / tps["hf"]
        print(f"generate  batch {B}: lmforge {tps['lmforge']:9.1f} tok/s  HF {tps['hf']:9.1f} tok/s  "
              f"ratio {ratio:5.2f}x  (per step {1e3 * med['lmforge'] / N:.2f} vs {1e3 * med['hf'] / N:.2f} ms)  "
              f"tokens identical: {same}  max |dlogp| {lp_diff:.2e}")
        results["cases"][f"generate_b{B}"] = {"tokens_per_s": tps, "ratio": ratio, "identical_tokens": same,
                                              "max_logprob_diff": lp_diff, "times_s": times}

    # ---- scoring ---------------------------------------------------------------------------
    S, L = args.score_batch, args.score_len
    ids = torch.randint(0, cfg.vocab_size, (S, L), generator=torch.Generator().manual_seed(99)).to(device)

    def ours_score():
        return torch.stack(decoder_token_logprobs(ours, ids, batch_size=S))

    def hf_score():
        with torch.inference_mode():
            logits = hf(ids).logits
            return logits.float().log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)

    med, times, outs = run_case({"lmforge": ours_score, "hf": hf_score}, args.rounds)
    diff = float((outs["lmforge"].cpu() - outs["hf"].cpu()).abs().max())
    tps = {k: S * L / v for k, v in med.items()}
    ratio = tps["lmforge"] / tps["hf"]
    print(f"score {S}x{L}: lmforge {tps['lmforge']:9.1f} tok/s  HF {tps['hf']:9.1f} tok/s  ratio {ratio:5.2f}x  "
          f"max |dlogp| {diff:.2e}")
    results["cases"]["score"] = {"tokens_per_s": tps, "ratio": ratio, "max_logprob_diff": diff, "times_s": times}
    ok = all(c.get("identical_tokens", True) for c in results["cases"].values()) and \
        all(c["max_logprob_diff"] <= 1e-4 for c in results["cases"].values())
    print("outputs match (identical tokens, log-probs within 1e-4):", ok)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
