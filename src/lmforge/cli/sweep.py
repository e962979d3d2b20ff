"""``lmforge sweep``: train models along IsoFLOP lines, fit the scaling law, allocate a bigger budget."""

from __future__ import annotations

import json

from lmforge.cli.train import parse_overrides

COMMAND = "sweep"
HELP = "IsoFLOP sweep: train small models per compute budget, fit the law, allocate a larger budget"

# A CPU-sized base run: character-level Shakespeare, context 128, 16 sequences per step.
CPU_BASE = {"data.tokenizer": "char", "data.seq_len": "128", "train.batch_size": "16", "train.lr": "2e-3",
            "train.progress": "false", "train.eval_batches": "40"}


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs/sweep", help="sweep directory (runs.csv, runs/, fits, plots)")
    p.add_argument("--budgets", default="5e11,1.5e12,5e12",
                   help="comma-separated training FLOP budgets (default: a CPU-sized sweep, under an hour)")
    p.add_argument("--sizes", type=int, default=4, help="model sizes per budget")
    p.add_argument("--spread", type=float, default=4.0, help="sizes span N_guess / spread .. N_guess * spread")
    p.add_argument("--preset", default="shakespeare-gpt", help="run preset the sweep's runs start from")
    p.add_argument("--target-flops", type=float, help="budget to allocate with the fitted law (default 100x the largest)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals")
    p.add_argument("--summarize", action="store_true", help="only fit and report the runs already in runs.csv")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.epilog = "Override the base run with --section.field VALUE (e.g. --data.seq_len 64)."
    p.set_defaults(_accepts_extra=True)


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
        result = sweep(base, budgets, args.out, args.sizes, args.spread, args.target_flops, args.bootstrap, log=log)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
