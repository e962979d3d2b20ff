"""Training throughput of the lmforge engine beside HF transformers' GPT2LMHeadModel.

Both sides run whole optimizer steps on the same batch, from the same weights (the HF model is
converted with ``lmforge.from_hf``): lmforge through :meth:`lmforge.train.Trainer.train_step`
(loss weighting, clipping, decay groups, AdamW as configured), HF as a plain PyTorch loop
(forward, cross-entropy, backward, clipping, ``torch.optim.AdamW``). On CUDA both run under the
same bf16 autocast. After a warm-up the rounds alternate lmforge / HF, so drift in machine speed
hits both alike; medians, their ratio (lmforge rate / HF rate, per round) and MFU (6N + attention FLOPs over the device peak - the
measured matmul peak on a CPU) are printed. The first step's losses must agree.

Shapes: ``tiny`` = nanoGPT's CPU recipe (4 layers, 128 wide, context 64, vocabulary 65, batch 12);
``small`` = 6 layers, 384 wide, 6 heads, context 256, vocabulary 8192, batch 8.

Not a test: ``python benchmarks/bench_train.py [--shapes tiny,small] [--rounds 5] [--steps 3]
[--threads N] [--device cpu|cuda] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES = {  # name: (n_layer, d_model, n_head, seq_len, vocab, batch)
    "tiny": (4, 128, 4, 64, 65, 12),
    "small": (6, 384, 6, 256, 8192, 8),
}


@dataclass
class Row:
    shape: str
    ours_tps: float
    hf_tps: float
    ratio: float
    ours_mfu: float
    hf_mfu: float
    loss_diff: float
    other_load: float | None


class Fixed:
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def bench_shape(name: str, device: torch.device, rounds: int, steps: int, peak: float) -> Row:
    import transformers as T

    from lmforge.accounting import count_flops
    from lmforge.bench.harness import LoadMonitor, interleave
    from lmforge.device import autocast, resolve_dtype
    from lmforge.interop import from_hf
    from lmforge.train import Trainer, TrainConfig

    n_layer, d, h, seq, vocab, batch = SHAPES[name]
    torch.manual_seed(0)
    hf_cfg = T.GPT2Config(n_layer=n_layer, n_embd=d, n_head=h, n_positions=seq, vocab_size=vocab, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = T.GPT2LMHeadModel(hf_cfg).to(device).train()
    ours = from_hf(hf).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    b = {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}
    bd = {k: v.to(device) for k, v in b.items()}

    cfg = TrainConfig(max_steps=10**6, batch_size=batch, lr=1e-4, warmup_steps=0, schedule="constant",
                      weight_decay=0.1, grad_clip=1.0, device=str(device), peak_flops=peak, progress=False,
                      sample_tokens=0, threads=torch.get_num_threads())
    trainer = Trainer(ours, cfg, Fixed(b), log=lambda m: None)
    dtype = resolve_dtype("auto", device)
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")

    def hf_step() -> float:
        with autocast(device, dtype):
            logits = hf(input_ids=bd["input_ids"]).logits
        loss = F.cross_entropy(logits.float().view(-1, vocab), bd["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    first_ours, first_hf = trainer.train_step().loss, hf_step()  # same weights, same batch: same loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_ours():
        for _ in range(steps):
            trainer.train_step()
        sync()

    def run_hf():
        for _ in range(steps):
            hf_step()
        sync()

    with LoadMonitor() as load:
        t_ours, t_hf = interleave(run_ours, run_hf, rounds=rounds, warmup=1)
    tokens = steps * batch * seq
    ours_tps, hf_tps = tokens / statistics.median(t_ours), tokens / statistics.median(t_hf)
    ratio = statistics.median([h_ / o for o, h_ in zip(t_ours, t_hf)])
    fpt = count_flops(ours.config, seq).rule_6n_attention_per_token
    return Row(name, ours_tps, hf_tps, ratio, ours_tps * fpt / peak, hf_tps * fpt / peak,
               abs(first_ours - first_hf), load.other_cores)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="tiny,small")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per timed call")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    from lmforge.accounting import device_peak
    from lmforge.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    peak = device_peak(device)
    print(f"device {device} ({torch.get_num_threads()} threads), peak {peak / 1e9:.1f} GFLOP/s "
          f"({'measured matmul' if device.type == 'cpu' else 'table'}); {args.rounds} interleaved rounds of "
          f"{args.steps} steps after a warm-up; medians")
    rows = []
    print(f"{'shape':<7} {'lmforge tok/s':>14} {'HF tok/s':>10} {'ratio':>6} {'MFU':>6} {'HF MFU':>7} "
          f"{'|dloss| step 1':>15} {'other load':>10}")
    for name in args.shapes.split(","):
        t0 = time.perf_counter()
        r = bench_shape(name, device, args.rounds, args.steps, peak)
        rows.append(r)
        load = "-" if r.other_load is None else f"{r.other_load:.2f} cores"
        print(f"{r.shape:<7} {r.ours_tps:>14,.0f} {r.hf_tps:>10,.0f} {r.ratio:>6.2f} {r.ours_mfu:>6.1%} "
              f"{r.hf_mfu:>7.1%} {r.loss_diff:>15.2e} {load:>10}   [{time.perf_counter() - t0:.0f} s]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "peak_flops": peak,
                       "rows": [r.__dict__ for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
