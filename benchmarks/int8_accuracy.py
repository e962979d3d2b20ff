"""int8 against fp32 on a trained decoder's held-out plays: bits per byte through both int8 paths.

``lmforge score`` feeds whole windows (many rows per matmul), which take the dequantised int8
weight in a float matmul; generation feeds one token per step, which takes fbgemm's dynamic int8
kernel (8-bit activations as well). So the held-out windows are scored twice per dtype: in one
forward each, and token by token through the KV cache (each step one row, as a decode step).

    lmforge train --preset shakespeare-gpt
    python benchmarks/int8_accuracy.py runs/shakespeare-gpt/best --windows 40

Prints bits per byte of each (dtype, path) and the int8 - fp32 differences.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from lmforge.data import open_dataset
from lmforge.infer import decoder_token_logprobs, load_for_inference
from lmforge.train.config import RunConfig
from lmforge.train.run import dataset_dir, tokens_per_byte
from lmforge.train.rundir import CONFIG_FILE


def held_out_windows(run_config: RunConfig, n: int, length: int) -> tuple[torch.Tensor, float]:
    """The first ``n`` windows of ``length`` tokens of the run's held-out split, and its tokens per byte."""
    dataset = open_dataset(dataset_dir(run_config))
    val = torch.from_numpy(dataset.split("val")[: n * length].astype("int64"))
    if val.numel() < n * length:
        raise SystemExit(f"the held-out split has {val.numel()} tokens, fewer than {n} x {length}")
    return val.reshape(n, length), tokens_per_byte(dataset)


def nats_whole(model, windows: torch.Tensor) -> float:
    """Summed next-token nats of every window in one forward each (``lmforge score``'s path)."""
    return -sum(float(lp.sum()) for lp in decoder_token_logprobs(model, list(windows)))


@torch.no_grad()
def nats_stepwise(model, windows: torch.Tensor) -> float:
    """The same sum with one token per forward through the KV cache (the decode path)."""
    B, T = windows.shape
    cache = model.new_cache(B, T)
    total = 0.0
    for t in range(T - 1):
        logits = model(windows[:, t : t + 1], cache=cache).logits[:, -1].float()
        total -= torch.log_softmax(logits, -1).gather(-1, windows[:, t + 1, None]).sum().item()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a trained decoder's directory (runs/NAME/best)")
    p.add_argument("--run", help="the run directory holding config.yaml (default: the model's parent)")
    p.add_argument("--windows", type=int, default=40)
    p.add_argument("--batch", type=int, default=1, help="rows per decode step on the step-wise path")
    args = p.parse_args()
    run_dir = Path(args.run) if args.run else Path(args.model).parent
    cfg = RunConfig.from_file(run_dir / CONFIG_FILE)
    windows, tpb = held_out_windows(cfg, args.windows, cfg.data.seq_len)
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    to_bpb = tpb / math.log(2) / predicted
    results = {}
    for dtype in ("fp32", "int8"):
        model, _ = load_for_inference(args.model, "cpu", dtype)
        t0 = time.perf_counter()
        whole = nats_whole(model, windows) * to_bpb
        t1 = time.perf_counter()
        step = sum(nats_stepwise(model, w) for w in windows.split(args.batch)) * to_bpb
        t2 = time.perf_counter()
        results[dtype] = (whole, step)
        print(
            f"{dtype}: whole windows {whole:.4f} bits per byte ({t1 - t0:.1f} s), "
            f"token by token {step:.4f} ({t2 - t1:.1f} s); {predicted:,} predicted tokens",
            flush=True,
        )
    (fw, fs), (qw, qs) = results["fp32"], results["int8"]
    print(f"int8 - fp32: whole windows {qw - fw:+.4f}, token by token {qs - fs:+.4f} bits per byte")


if __name__ == "__main__":
    main()
