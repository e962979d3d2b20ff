"""``lmforge fit``: fit a scaling law to a runs CSV (Chinchilla's Approaches 1, 2 and 3)."""

from __future__ import annotations

import json

from lmforge.plan import fit
from lmforge.plan.runs import synthetic_runs

COMMAND = "fit"
HELP = "fit a scaling law to training runs (CSV: params,tokens,loss[,flops][,run,step])"


def add_arguments(p) -> None:
    p.add_argument("runs", help="CSV with columns params,tokens,loss (optional flops; run and step for loss curves)")
    p.add_argument(
        "--approach",
        type=int,
        choices=[1, 2, 3],
        default=3,
        help="3: parametric L(N, D) (default); 2: IsoFLOP parabolas; 1: envelope of loss curves",
    )
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for confidence intervals (e.g. 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--top-k", type=int, default=32, help="approach 3: grid starts refined with L-BFGS (default 32)")
    p.add_argument("--all-starts", action="store_true", help="approach 3: refine all 4,500 grid starts (slow)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="approach 2: runs within this relative difference of FLOPs share a budget (default 0.1)",
    )
    p.add_argument("--out", help="write the fitted law as JSON (for `lmforge plan --law FILE`)")
    p.add_argument("--plot", help="write the data, fitted curves and frontier to this PNG")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="first write synthetic runs from the epoch law to RUNS (loss curves for --approach 1), to try the command",
    )


def run(args) -> None:
    if args.synthetic:
        curves = args.approach == 1  # loss curves: 12 sizes logged 30 times, with less noise per point
        synthetic_runs(
            "epoch",
            seed=args.seed,
            curves=curves,
            sizes=12 if curves else 30,
            steps=30,
            noise=0.002 if curves else 0.01,
        ).to_csv(args.runs)
        print(f"wrote synthetic runs to {args.runs}")
    options = {3: {"top_k": None if args.all_starts else args.top_k}, 2: {"tolerance": args.tolerance}, 1: {}}
    result = fit(args.runs, approach=args.approach, bootstrap=args.bootstrap, seed=args.seed, **options[args.approach])
    # the fit first, then the files: a bad path costs only that file
    print(json.dumps(result.to_dict(), indent=2, default=float) if args.json else result.summary(), flush=True)
    if args.out:
        result.save(args.out)
    if args.plot:
        from lmforge.plan.plots import plot_fit

        plot_fit(result, args.plot)
    for what, path in (("law", args.out), ("plot", args.plot)):
        if path and not args.json:
            print(f"wrote {what} to {path}")
