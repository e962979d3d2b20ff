"""``lmforge plan``: compute-optimal allocation for a budget, or the accounting of one model."""

from __future__ import annotations

import json

from lmforge.cli.common import model_config_arg
from lmforge.errors import ConfigError
from lmforge.hardware import DEVICES
from lmforge.plan import LAWS, allocate, describe
from lmforge.plan.laws import LAW_NOTES
from lmforge.plan.report import account

COMMAND = "plan"
HELP = "how large a model, on how many tokens, for a budget (FLOPs, device-hours or dollars); or account one model"


def add_arguments(p) -> None:
    b = p.add_argument_group("budget (one of --flops, --hours, --dollars; or --target-loss)")
    b.add_argument("--flops", type=float, help="training compute in FLOPs, e.g. 1e21")
    b.add_argument("--device", help=f"accelerator: {', '.join(DEVICES)} (h100 = h100-sxm, a100 = a100-80gb)")
    b.add_argument("--hours", type=float, help="wall-clock hours on --gpus devices")
    b.add_argument("--dollars", type=float, help="money to spend (at --price per device-hour)")
    b.add_argument("--gpus", type=int, default=1, help="number of devices (default 1)")
    b.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation (default 0.4)")
    b.add_argument("--price", type=float, help="USD per device-hour (default: the device table's rough cloud price)")
    b.add_argument("--target-loss", type=float, help="without a budget: the least compute that reaches this loss")
    a = p.add_argument_group("law and constraints")
    a.add_argument(
        "--law", default="chinchilla", help=f"a preset ({', '.join(LAWS)}) or a JSON file from `lmforge fit`"
    )
    a.add_argument(
        "--inference-tokens", type=float, help="tokens to serve: inference-aware allocation (Sardana et al.)"
    )
    a.add_argument("--available-tokens", type=float, help="unique training tokens available (warns when D* exceeds it)")
    s = p.add_argument_group("model shape")
    s.add_argument(
        "--template",
        help="preset, config file or model directory giving the architecture (default: LLaMA-style decoder)",
    )
    s.add_argument("--vocab-size", type=int, help="vocabulary size (default 32000 or the template's)")
    s.add_argument("--tokenizer", help="take the vocabulary size from this tokenizer.json (or its directory)")
    s.add_argument("--seq-len", type=int, help="context length (default 2048 or the template's)")
    s.add_argument("--head-dim", type=int, help="head size (default 64 below d_model 2048, else 128)")
    s.add_argument("--aspect", default="64,128", help="range of d_model / n_layer (default 64,128)")
    m = p.add_argument_group("accounting of one model (instead of a budget)")
    m.add_argument(
        "--model", help="a model preset, config file or model directory: parameters, FLOPs, memory, time and cost"
    )
    m.add_argument("--tokens", type=float, help="training tokens for the time and cost of --model (needs --device)")
    m.add_argument("--micro-batch", type=int, default=1, help="sequences per device per step, for memory (default 1)")
    p.add_argument("--list", action="store_true", help="list the law presets and devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", help="write IsoFLOP curves and the frontier to this PNG")


def _aspect(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"aspect: expected LOW,HIGH (e.g. 64,128), got {text!r}") from None
    return lo, hi


def _print_lists() -> None:
    print("laws:")
    for name, law in LAWS.items():
        print(f"  {name:<18} {describe(law)}\n  {'':<18} {LAW_NOTES.get(name, '')}")
    print("devices (dense bf16 peak, memory, rough USD per device-hour):")
    for d in DEVICES.values():
        print(f"  {d.name:<10} {d.peak_flops / 1e12:>7.1f} TFLOP/s {d.memory_gib:>5.0f} GiB  ${d.price:.2f}")


def run(args) -> None:
    if args.list:
        _print_lists()
        return
    if args.model:
        cfg = model_config_arg(args.model)
        if args.seq_len:
            cfg = cfg.replace(max_positions=max(cfg.max_positions, args.seq_len))
        if args.tokens is not None and not args.device:
            raise ConfigError("tokens: the time and cost of training need --device (e.g. --device h100)")
        result = account(cfg, args.seq_len, args.micro_batch, args.gpus, args.tokens, args.device, args.mfu, args.price)
    else:
        result = allocate(
            args.flops,
            law=args.law,
            device=args.device,
            hours=args.hours,
            gpus=args.gpus,
            mfu=args.mfu,
            dollars=args.dollars,
            price=args.price,
            target_loss=args.target_loss,
            inference_tokens=args.inference_tokens,
            available_tokens=args.available_tokens,
            template=model_config_arg(args.template) if args.template else None,
            vocab_size=args.vocab_size,
            tokenizer=args.tokenizer,
            seq_len=args.seq_len,
            aspect=_aspect(args.aspect),
            head_dim=args.head_dim,
            micro_batch=args.micro_batch,
        )
    print(json.dumps(result.to_dict(), indent=2, default=float) if args.json else result.summary(), flush=True)
    if args.plot and not args.model:  # after the plan, so that a bad path costs only the plot
        from lmforge.plan.plots import plot_allocation

        plot_allocation(result, args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
