"""``lmforge train``: pretrain a model from a run preset, a config file and dotted overrides.

lmforge train --preset shakespeare-gpt --budget 5m           # the quick start: the best model 5 min allow
lmforge train --preset shakespeare-gpt                       # the preset's own shape and steps
lmforge train --config my.yaml --model.n_layer 6 --train.max_steps 5000
lmforge train --resume runs/shakespeare-gpt                   # continue where it stopped
torchrun --nproc_per_node 2 -m lmforge train --preset tiny-gpt
lmforge train --flops 1e15 --law runs/sweep/law-approach3.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from lmforge.cli.common import parse_overrides
from lmforge.errors import ConfigError

COMMAND = "train"
HELP = "pretrain a decoder (causal LM), encoder (MLM, MLM+NSP) or encoder-decoder (span corruption)"


def add_arguments(p) -> None:
    from lmforge.train.config import RUN_PRESETS

    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help=f"a run preset: {', '.join(RUN_PRESETS)} (default: shakespeare-gpt)")
    src.add_argument("--config", help="a run config file (.yaml / .json), e.g. the config.yaml of an earlier run")
    src.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest good checkpoint")
    p.add_argument("--name", help="run name (default: the preset's); the run directory is runs/<name>")
    p.add_argument("--out", help="run directory (default: runs/<name>)")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if the run directory has checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("--device", help="device to train on: auto, cpu, cuda, cuda:N, mps (sets train.device)")
    b = p.add_argument_group(
        "budget: plan the best model the budget allows (shape, batch, lr, steps), print the plan, train it, "
        "and report the held-out loss achieved against the law's prediction"
    )
    b.add_argument(
        "--budget", metavar="TIME", help="wall time of training on this machine, e.g. 90s, 5m, 2h, 1h30m (time-optimal)"
    )
    b.add_argument("--flops", type=float, help="training compute in FLOPs, e.g. 1e15 (compute-optimal)")
    b.add_argument("--mfu", type=float, help="assume this MFU for every model size instead of measuring the machine")
    b.add_argument(
        "--remeasure", action="store_true", help="measure the machine's throughput again instead of reading its cache"
    )
    b.add_argument(
        "--law",
        help="a law preset or JSON file from `lmforge fit` / `lmforge sweep` (default: lmforge's own law for "
        "the run's data, tokenizer, context and objective when it ships one, e.g. shakespeare-gpt; else chinchilla)",
    )
    b.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="train this multiple of the planned size instead, for the same budget (e.g. 0.5 or 2: checks the plan)",
    )
    p.epilog = (
        "Any config field can be overridden with --section.field VALUE, e.g. --model.n_layer 6 "
        "--data.seq_len 256 --train.lr 1e-3 --train.max_steps 5000."
    )
    p.set_defaults(_accepts_extra=True)


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_UNIT_SECONDS = {
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
}


def parse_duration(text: str) -> float:
    """Seconds of ``90s``, ``5m``, ``5min``, ``2h``, ``1h30m``, ``1.5h`` or a plain number of seconds."""
    s = text.strip().lower()
    pairs = re.findall(_NUMBER + r"\s*([a-z]+)", s)
    if re.fullmatch(_NUMBER, s):
        seconds = float(s)
    elif re.fullmatch(rf"(?:\s*{_NUMBER}\s*[a-z]+)+", s) and all(u in _UNIT_SECONDS for _, u in pairs):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in pairs)
    else:
        raise ConfigError(f"--budget: expected a wall time such as 90s, 5m, 2h or 1h30m, got {text!r}")
    if not seconds > 0:
        raise ConfigError(f"--budget: must be a positive time, got {text!r}")
    return seconds


# what --budget chooses, and so refuses as overrides
PLANNED = ("model.n_layer", "model.d_model", "model.n_head", "model.n_kv_head", "model.d_ff", "train.max_steps")


def resolve_config(args):
    """The RunConfig of the command line, and the run directory to resume (or None)."""
    from lmforge.train import RunConfig
    from lmforge.train.rundir import CONFIG_FILE

    overrides = parse_overrides(getattr(args, "_extra", []) or [])
    resume = None
    if args.resume:
        resume = Path(args.resume)
        if not (resume / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume {resume}: no {CONFIG_FILE} there; is it a run directory?")
        cfg = RunConfig.from_file(resume / CONFIG_FILE)
        cfg = cfg.replace(out_dir=str(resume))
    elif args.config:
        cfg = RunConfig.from_file(args.config)
    else:
        cfg = RunConfig.from_preset(args.preset or "shakespeare-gpt")
    if args.name:
        cfg = cfg.replace(name=args.name)
    if args.out:
        cfg = cfg.replace(out_dir=args.out)
    if overrides:
        cfg = cfg.override(overrides)
    if args.device:
        cfg = cfg.replace(train={**cfg.train.to_dict(), "device": args.device})
    return cfg, resume


def _budgeted(args) -> bool:
    if args.budget is not None or args.flops is not None:
        if args.budget is not None and args.flops is not None:
            raise ConfigError("--budget: give a wall time (--budget) or a compute budget (--flops), not both")
        if args.resume:
            raise ConfigError("--resume: a budgeted run resumes from its own config; drop --budget / --flops")
        return True
    if args.scale != 1:
        raise ConfigError("--scale: plans a budgeted run; give --budget TIME or --flops")
    for name in ("mfu", "law", "remeasure"):
        if getattr(args, name) not in (None, False):
            raise ConfigError(f"--{name}: plans a budgeted run; give --budget TIME or --flops")
    return False


def run_budget(args) -> int:
    """``lmforge train --budget TIME`` / ``--flops C``: plan, print the plan, train, compare."""
    from lmforge.jobs import plan_budget, train_budget

    overrides = parse_overrides(getattr(args, "_extra", []) or [])
    planned = [k for k in overrides if k in PLANNED]
    if planned:
        raise ConfigError(f"--{planned[0]}: the budget chooses the model shape and max_steps; drop it")
    seconds = parse_duration(args.budget) if args.budget is not None else None
    if args.flops is not None and not (args.flops > 0 and args.flops < float("inf")):
        raise ConfigError(f"--flops: must be a positive number, got {args.flops}")
    cfg, _ = resolve_config(args)
    if args.scale != 1 and not args.name and not args.out:  # a check of the plan does not take the planned run's place
        cfg = cfg.replace(name=f"{cfg.name}-x{args.scale:g}")
    batch = overrides.get("train.batch_size")
    plan = plan_budget(
        cfg,
        hours=seconds / 3600 if seconds is not None else None,
        flops=args.flops,
        law=args.law,
        mfu=args.mfu,
        batch_size=cfg.train.batch_size if batch is not None else None,
        lr=cfg.train.lr if "train.lr" in overrides else None,
        scale=args.scale,
        remeasure=args.remeasure,
    )
    print(plan.summary(), flush=True)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(plan.config.to_dict(), sort_keys=False), end="")
        return 0
    result = train_budget(plan, overwrite=args.overwrite)
    print(result.summary(), flush=True)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    return _exit_code(result.fit)


def _exit_code(result) -> int:
    if result.stopped_by:  # interrupted: the shell convention 128 + signal number
        return {"SIGINT": 130, "SIGTERM": 143}.get(result.stopped_by, 1)
    return 0


def run(args) -> int:
    from lmforge.jobs import pretrain

    if _budgeted(args):
        return run_budget(args)
    cfg, resume = resolve_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = pretrain(cfg, resume=resume is not None, overwrite=args.overwrite)
    if args.json:
        print(
            json.dumps(
                {
                    "step": result.step,
                    "stopped_by": result.stopped_by,
                    "metrics": result.metrics,
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                    "best_val_loss": result.best_val_loss,
                    "tokens": result.tokens,
                    "train_seconds": result.train_seconds,
                },
                indent=2,
            )
        )
    return _exit_code(result)


if __name__ == "__main__":
    from lmforge.cli.main import main

    sys.exit(main(["train", *sys.argv[1:]]))
