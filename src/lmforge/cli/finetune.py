"""``lmforge finetune``: classification, seq2seq or prompt -> completion on a pretrained model.

    lmforge finetune --preset shakespeare-genre
    lmforge finetune --task classify --train train.csv --val val.csv --model runs/shakespeare-gpt --params lora
    lmforge finetune --preset shakespeare-genre --model minilm --params top-k:2 --train.lr 3e-4

Fields of the config's sections are also reachable as dotted options (``--train.max_steps 500``,
``--train.weight_decay 0``, ``--lora.alpha 32``).
"""

from __future__ import annotations

import json

from lmforge.errors import ConfigError

COMMAND = "finetune"
HELP = "fine-tune a model: classify, seq2seq or completion; all parameters, some layers, BitFit or LoRA"


def add_arguments(p) -> None:
    p.add_argument("--preset", help="a named fine-tuning recipe (shakespeare-genre)")
    p.add_argument("--config", help="a fine-tuning config file (.json / .yaml)")
    p.add_argument("--task", choices=["classify", "seq2seq", "completion"])
    p.add_argument(
        "--train", dest="train_file", metavar="FILE", help="training rows (.csv / .jsonl) or shakespeare-genre"
    )
    p.add_argument("--val", dest="val_file", metavar="FILE", help="validation rows (.csv / .jsonl)")
    p.add_argument("--model", help="model / run / HF directory, 'minilm', or a model preset (random weights)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the model directory's)")
    p.add_argument("--init", choices=["pretrained", "scratch"], help="scratch: same architecture, random weights")
    p.add_argument(
        "--pooling",
        choices=["auto", "cls", "mean", "last"],
        help="classify: the vector the head reads (auto: [CLS] / pooler, a decoder's last token, an "
        "encoder-decoder's mean)",
    )
    p.add_argument("--params", help="what learns: all | no-embeddings | top-k:N | bitfit | lora")
    p.add_argument("--lora-rank", type=int)
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--lora-targets", help="comma-separated module names, e.g. attn.qkv,attn.proj,mlp.fc,mlp.proj")
    p.add_argument("--metric", help="picks best/: macro_f1 | accuracy | loss (classify); loss | exact_match | bleu")
    p.add_argument("--patience", type=int, help="stop after N evaluations without improvement (0: never)")
    p.add_argument("--max-len", type=int, help="tokens per example")
    p.add_argument("--max-per-class", type=int, help="genre task: training passages per genre (0: all)")
    p.add_argument("--passage-chars", type=int, help="genre task: passage length in characters")
    p.add_argument("--val-per-play", type=int, help="genre task: validation passages per held-out play (0: all)")
    p.add_argument("--steps", type=int, help="optimizer steps (train.max_steps)")
    p.add_argument("--lr", type=float, help="peak learning rate (train.lr)")
    p.add_argument("--batch-size", type=int, help="examples per step (train.batch_size)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (train.eval_every)")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--device", help="auto | cpu | cuda | mps (train.device)")
    p.add_argument("--out", dest="out_dir", help="run directory (default runs/<name>)")
    p.add_argument("--name", help="run name")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(_accepts_extra=True)


_FLAGS = {  # option -> dotted config field
    "task": "task",
    "train_file": "train_file",
    "val_file": "val_file",
    "model": "model",
    "pooling": "pooling",
    "tokenizer": "tokenizer",
    "init": "init",
    "params": "params",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_targets": "lora.targets",
    "metric": "metric",
    "patience": "patience",
    "max_len": "max_len",
    "max_per_class": "max_per_class",
    "passage_chars": "passage_chars",
    "val_per_play": "val_per_play",
    "steps": "train.max_steps",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "eval_every": "train.eval_every",
    "seed": "train.seed",
    "device": "train.device",
    "out_dir": "out_dir",
    "name": "name",
}


def build_config(args):
    from lmforge.cli.common import parse_overrides
    from lmforge.finetune import FinetuneConfig

    if args.config:
        cfg = FinetuneConfig.from_file(args.config)
    elif args.preset:
        cfg = FinetuneConfig.from_preset(args.preset)
    else:
        cfg = FinetuneConfig()
    changes = {field: getattr(args, opt) for opt, field in _FLAGS.items() if getattr(args, opt, None) is not None}
    if args.preset and "model" in changes and "name" not in changes and not args.out_dir:
        changes["name"] = f"{cfg.name}-{str(changes['model']).rstrip('/').split('/')[-1]}"
    changes.update(parse_overrides(getattr(args, "_extra", [])))
    return cfg.override(changes) if changes else cfg


def run(args) -> int:
    from lmforge.finetune import finetune

    cfg = build_config(args)
    if not (cfg.train_file or args.preset or args.config):
        raise ConfigError("give --preset NAME, or --task with --train FILE and --val FILE")
    result = finetune(cfg, overwrite=args.overwrite)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    base = result.baseline
    if args.json:
        print(
            json.dumps(
                {
                    "metrics": result.metrics,
                    "best_step": result.best_step,
                    "steps": result.steps,
                    "trainable": result.trainable.trainable,
                    "total": result.trainable.total,
                    "baseline": base,
                    "run_dir": str(result.run_dir),
                    "seconds": result.seconds,
                },
                indent=2,
            )
        )
        return 0
    print(f"best at step {result.best_step} of {result.steps}: {shown}")
    if base:
        print(f"majority-class baseline: accuracy {base['accuracy']:.4f}  macro_f1 {base['macro_f1']:.4f}")
    print(f"{result.trainable}; {result.seconds:.0f} s")
    print(f"model: {result.run_dir / 'best'} (load with lmforge.finetune.load_task_model)")
    return 0
