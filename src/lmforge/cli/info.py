"""``lmforge info``: the summary of a model preset, config file or model directory."""

from __future__ import annotations

import json

from lmforge.accounting import count_flops, count_params
from lmforge.cli.common import resolve_model_config

COMMAND = "info"
HELP = "summarise a model: parameters (total / non-embedding) and FLOPs per token"


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a model preset name, e.g. gpt2-small")
    src.add_argument("--config", help="a model config (.json / .yaml), or a model, run or HF model directory")
    p.add_argument("--seq-len", type=int, help="context length for the FLOP count (default: max_positions)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> None:
    cfg = resolve_model_config(args.preset, args.config)
    params, flops = count_params(cfg), count_flops(cfg, args.seq_len)
    summary = {
        "arch": cfg.arch,
        "params_total": params.total,
        "params_non_embedding": params.non_embedding,
        "seq_len": flops.tokens,
        "forward_flops_per_token": flops.forward_per_token,
        "training_flops_per_token": flops.training_per_token,
        "training_flops_per_token_6n_attention": flops.rule_6n_attention_per_token,
        "config": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{args.preset or args.config}: {cfg.arch}, {cfg.encoder_layers} encoder + {cfg.decoder_layers} decoder "
        f"layers, d_model {cfg.d_model}, {cfg.n_head} heads ({cfg.kv_heads} KV), FFN {cfg.ffn_dim} {cfg.activation}, "
        f"{cfg.positions} positions, {cfg.norm_position}-{cfg.norm}"
    )
    print(f"parameters: {params.total:,} total, {params.non_embedding:,} non-embedding")
    print(
        f"FLOPs/token at context {flops.tokens}: forward {flops.forward_per_token:.3e}, "
        f"training {flops.training_per_token:.3e} (6N + attention rule: {flops.rule_6n_attention_per_token:.3e})"
    )
