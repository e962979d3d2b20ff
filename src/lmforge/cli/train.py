"""``lmforge train``: pretrain a model from a run preset, a config file and dotted overrides.

lmforge train --preset shakespeare-gpt                       # the quick start
lmforge train --config my.yaml --model.n_layer 6 --train.max_steps 5000
lmforge train --resume runs/shakespeare-gpt                   # continue where it stopped
torchrun --nproc_per_node 2 -m lmforge train --preset tiny-gpt
"""

from __future__ import annotations

import json
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
    p.epilog = (
        "Any config field can be overridden with --section.field VALUE, e.g. --model.n_layer 6 "
        "--data.seq_len 256 --train.lr 1e-3 --train.max_steps 5000."
    )
    p.set_defaults(_accepts_extra=True)


def resolve_config(args):
    """The RunConfig of the command line, and the run directory to resume (or None)."""
    from lmforge.train import RunConfig
    from lmforge.train.run import CONFIG_FILE

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
    return cfg, resume


def run(args) -> int:
    from lmforge.jobs import pretrain

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
    if result.stopped_by:  # interrupted: the shell convention 128 + signal number
        return {"SIGINT": 130, "SIGTERM": 143}.get(result.stopped_by, 1)
    return 0


if __name__ == "__main__":
    from lmforge.cli.main import main

    sys.exit(main(["train", *sys.argv[1:]]))
