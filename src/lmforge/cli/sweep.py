"""``lmforge sweep``: train models along IsoFLOP lines, fit the scaling law, allocate a bigger budget."""

from __future__ import annotations

import json

from lmforge.cli.common import parse_overrides

COMMAND = "sweep"
HELP = "IsoFLOP sweep: train small models per compute budget, fit the law, allocate a larger budget"

# A CPU-sized base run: character-level Shakespeare, context 128, 16 sequences per step; head size
# 16, so that the shape rule has sizes from 7k parameters up; a learning rate of 1e-2, because
# these tiny models at a few thousand steps lose most at a lower one (2e-3: 0.2-0.3 nats worse).
CPU_BASE = {
    "data.tokenizer": "char",
    "data.seq_len": "128",
    "train.batch_size": "16",
    "train.lr": "1e-2",
    "model.n_head": "8",
    "train.progress": "false",
    "train.eval_batches": "40",
}


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs/sweep", help="sweep directory (runs.csv, runs/, fits, plots)")
    p.add_argument(
        "--budgets",
        default="3e11,1e12,3e12,1e13",
        help="comma-separated training FLOP budgets (default: a CPU-sized sweep, about 20 minutes on 2 cores)",
    )
    p.add_argument("--sizes", type=int, default=4, help="model sizes per budget")
    p.add_argument("--spread", type=float, default=4.0, help="a budget's sizes span centre / spread .. centre * spread")
    p.add_argument(
        "--tokens-per-param",
        type=float,
        default=20.0,
        help="first guess of the optimal ratio D/N, centring the first budget's sizes",
    )
    p.add_argument(
        "--extend", type=int, default=2, help="sizes a budget may add beyond its edge while its lowest loss sits there"
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="runs trained at once, the cores split between them "
        "(default: up to 4 on a CPU, where small models leave cores idle; 1 on a GPU)",
    )
    p.add_argument("--preset", default="shakespeare-gpt", help="run preset the sweep's runs start from")
    p.add_argument(
        "--target-flops", type=float, help="budget to allocate with the fitted law (default 100x the largest)"
    )
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals")
    p.add_argument("--summarize", action="store_true", help="only fit and report the runs already in runs.csv")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.epilog = "Override the base run with --section.field VALUE (e.g. --data.seq_len 64)."
    p.set_defaults(_accepts_extra=True)


def default_jobs(base) -> int:
    import os

    from lmforge.device import resolve_device

    return 1 if resolve_device(base.train.device).type != "cpu" else max(1, min(4, os.cpu_count() or 1))


def run(args) -> None:
    from lmforge.plan.sweep import summarize, sweep
    from lmforge.train import RunConfig

    log = (lambda m: None) if args.json else print
    if args.summarize:
        result = summarize(args.out, args.target_flops, args.bootstrap, log=log)
    else:
        base = RunConfig.from_preset(args.preset)
        if args.preset == "shakespeare-gpt":
            base = base.override(CPU_BASE)
        base = base.override(parse_overrides(args._extra or []))
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
        result = sweep(
            base,
            budgets,
            args.out,
            args.sizes,
            args.spread,
            args.target_flops,
            args.bootstrap,
            tokens_per_param=args.tokens_per_param,
            extend=args.extend,
            jobs=args.jobs or default_jobs(base),
            log=log,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
