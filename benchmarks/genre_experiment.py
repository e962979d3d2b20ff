"""Does pretraining help? The Shakespeare genre task, five ways, over several seeds.

Which kind of play (comedy, history, tragedy, roman, romance, problem) is a ~500-character
passage from? Train on passages of 32 plays, validate on the six standard held-out plays (one per
genre; no play, hence no character name, is on both sides). Compared, with the same recipe:

1. majority class: always the most frequent training genre;
2. scratch: the quick-start GPT's architecture with random weights, trained on the labelled
   passages alone;
3. pretrained + full fine-tuning: that GPT pretrained on the corpus's training plays
   (``lmforge train --preset shakespeare-gpt``, shortened), every parameter learning;
4. pretrained + LoRA: the same, only rank-r adapters and the classifier learning;
5. MiniLM + full fine-tuning: the packaged all-MiniLM-L6-v2 (22M parameters, pretrained on a
   billion English sentence pairs) with its own tokenizer.

Metrics are macro-F1 and accuracy of the final model on the whole (balanced) validation set: no
checkpoint is picked on it, so no condition is flattered by the choice. Means and standard
deviations over seeds (the seed draws the classifier head, the adapters, the order of the
batches, the balanced training sample and, for scratch, the weights).

    python benchmarks/genre_experiment.py                       # ~15-25 min on 2 CPU cores
    python benchmarks/genre_experiment.py --seeds 0 --quick     # a smoke run
    # or one process per seed, then combine:
    python benchmarks/genre_experiment.py --only scratch --seeds 0 --threads 1 --out r0.json  (...)
    python benchmarks/genre_experiment.py --merge r0.json r1.json r2.json

Writes ``benchmarks/results/genre_experiment.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import lmforge.finetune as ft
from lmforge.cli.main import main as lmforge_main

ROOT = Path(__file__).resolve().parent


# The quick-start recipe (lmforge train --preset shakespeare-gpt: byte-level BPE 2048, context 128,
# 4 layers) at 128 wide and batch 16, so that pretraining takes minutes of a 2-core CPU.
PRETRAIN_OVERRIDES = ["--model.d_model", "128", "--model.n_head", "4", "--train.batch_size", "16"]


def pretrain(run_dir: Path, steps: int) -> Path:
    """The quick-start GPT, smaller and shorter (reused when its best/ is already there)."""
    if (run_dir / "best" / "config.json").is_file():
        print(f"reusing the pretrained model in {run_dir / 'best'}")
        return run_dir / "best"
    code = lmforge_main(
        [
            "train",
            "--preset",
            "shakespeare-gpt",
            "--out",
            str(run_dir),
            "--overwrite",
            *PRETRAIN_OVERRIDES,
            "--train.max_steps",
            str(steps),
            "--train.warmup_steps",
            str(max(1, steps // 20)),
            "--train.eval_every",
            str(steps),
            "--train.checkpoint_every",
            str(steps),
            "--train.progress",
            "false",
        ]
    )
    if code:
        sys.exit(f"pretraining failed ({code})")
    return run_dir / "best"


def conditions(pretrained: Path, args) -> dict[str, dict]:
    """Fine-tuning configs (as FinetuneConfig overrides) of each compared condition."""
    gpt_train = dict(max_steps=args.steps, batch_size=16, lr=args.lr, warmup_steps=args.steps // 10)
    lora_train = dict(gpt_train, lr=args.lora_lr)
    minilm_train = dict(
        max_steps=args.minilm_steps, batch_size=16, lr=args.minilm_lr, warmup_steps=args.minilm_steps // 10
    )
    return {
        "scratch": dict(model=str(pretrained), init="scratch", params="all", train=gpt_train),
        "pretrained + full": dict(model=str(pretrained), params="all", train=gpt_train),
        "pretrained + LoRA": dict(
            model=str(pretrained),
            params="lora",
            lora=dict(
                rank=args.lora_rank,  # alpha 2 * rank
                targets=["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"],
            ),
            train=lora_train,
        ),
        "MiniLM + full": dict(model="minilm", params="all", train=minilm_train),
    }


CONDITIONS = ("scratch", "pretrained + full", "pretrained + LoRA", "MiniLM + full")


def run_condition(name: str, overrides: dict, seed: int, args) -> dict:
    base = ft.FinetuneConfig.from_preset("shakespeare-genre").to_dict()
    run_recipe = json.loads(json.dumps(overrides))  # what this run was, stored with its result
    base.update(
        max_per_class=args.max_per_class,
        val_per_play=args.val_per_play,
        passage_chars=args.passage_chars,
        max_len=128,
        patience=0,
    )
    train = dict(base["train"], eval_every=0, progress=False, log_every=50, seed=seed, **overrides.pop("train"))
    cfg = ft.FinetuneConfig.from_dict({**base, **overrides, "train": train, "name": f"genre-{seed}"})
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = ft.finetune(cfg, save=False, log=lambda s: None)
    row = {
        "condition": name,
        "seed": seed,
        **res.metrics,
        "trainable": res.trainable.trainable,
        "total": res.trainable.total,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "baseline": res.baseline,
        "train_size": res.train_size,
        "val_size": res.val_size,
        "recipe": run_recipe,
    }
    print(
        f"  {name:20s} seed {seed}: macro_f1 {res.metrics['macro_f1']:.4f}  accuracy {res.metrics['accuracy']:.4f}"
        f"  ({res.trainable.trainable:,} / {res.trainable.total:,} trainable, {row['seconds']:.0f} s)",
        flush=True,
    )
    return row


def summarise(rows: list[dict]) -> tuple[list[dict], str]:
    def ms(values):
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    present = {r["condition"] for r in rows}
    names = ["majority class"] + [n for n in CONDITIONS if n in present]
    table, summary = [], []
    for name in names:
        if name == "majority class":  # the same passages and labels under every condition of a seed
            chosen = list({r["seed"]: r["baseline"] for r in rows}.values())
            trainable = share = None
        else:
            chosen = [r for r in rows if r["condition"] == name]
            trainable = chosen[0]["trainable"]
            share = 100 * trainable / chosen[0]["total"]
        f1, acc = ms([r["macro_f1"] for r in chosen]), ms([r["accuracy"] for r in chosen])
        secs = ms([r["seconds"] for r in chosen]) if trainable else (0.0, 0.0)
        summary.append(
            {
                "condition": name,
                "macro_f1_mean": f1[0],
                "macro_f1_std": f1[1],
                "accuracy_mean": acc[0],
                "accuracy_std": acc[1],
                "trainable": trainable,
                "trainable_pct": share,
                "seconds_mean": secs[0],
                "seeds": len(chosen),
            }
        )
        table.append(
            f"| {name} | {f1[0]:.3f} ± {f1[1]:.3f} | {acc[0]:.3f} ± {acc[1]:.3f} | "
            + (f"{trainable:,} ({share:.1f}%)" if trainable else "-")
            + f" | {len(chosen)} |"
        )
    head = [
        "| condition | macro-F1 (mean ± std) | accuracy (mean ± std) | trainable parameters | seeds |",
        "|---|---|---|---|---|",
    ]
    return summary, "\n".join(head + table)


def pretraining_seconds(run_dir: Path) -> float | None:
    """Training time of the pretraining run, from its metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [json.loads(line).get("elapsed_s") for line in path.read_text().splitlines() if line.strip()]
    return max((t for t in times if t is not None), default=None)


def write(out: Path, rows: list[dict], args) -> str:
    summary, table = summarise(rows)
    total = sum(r["seconds"] for r in rows)
    cpu = sum(r.get("cpu_seconds", 0.0) for r in rows)
    pre = pretraining_seconds(Path(args.pretrain_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": recipe(args),
                "summary": summary,
                "table": table,
                "runs": rows,
                "fine_tuning_seconds": total,
                "fine_tuning_cpu_seconds": cpu,
                "pretraining_seconds": pre,
            },
            indent=2,
        )
        + "\n"
    )
    return (
        table
        + f"\n\nwall time: fine-tuning runs {total / 60:.1f} min"
        + (f" ({cpu / 60:.1f} min of CPU where measured)" if cpu else "")
        + (f", pretraining {pre / 60:.1f} min" if pre else "")
    )


DATA_SETTINGS = ("passage_chars", "max_per_class", "val_per_play", "quick")


def recipe(args) -> dict:
    """The data settings, which runs to compare must share (each run records its own training recipe)."""
    return {k: getattr(args, k) for k in DATA_SETTINGS}


def earlier_rows(path: Path, args, strict: bool = False) -> list[dict]:
    """Runs kept from an earlier invocation with the same recipe (so conditions can run apart)."""
    if (args.fresh and not strict) or not path.is_file():
        return []
    old = json.loads(path.read_text())
    if {k: old.get("args", {}).get(k) for k in DATA_SETTINGS} != recipe(args):
        if strict:
            sys.exit(f"{path} holds runs of another recipe than this command's")
        print(f"note: {path} holds runs of another recipe; starting afresh")
        return []
    return old["runs"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--pretrain-dir", default="runs/genre-pretrain-gpt")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps of the GPT conditions")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--lora-rank", type=int, default=4, help="4 on every linear layer: about 3%% of the GPT")
    p.add_argument("--minilm-steps", type=int, default=60)
    p.add_argument("--minilm-lr", type=float, default=1e-4)
    p.add_argument("--passage-chars", type=int, default=320, help="~125 BPE tokens: the GPT's context is 128")
    p.add_argument("--max-per-class", type=int, default=200)
    p.add_argument("--val-per-play", type=int, default=40)
    p.add_argument("--only", nargs="+", help="run only these conditions")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--fresh", action="store_true", help="forget the runs already in --out")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only combine these result files into --out")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, small data")
    p.add_argument("--out", default=str(ROOT / "results" / "genre_experiment.json"))
    args = p.parse_args()
    if args.quick:
        args.pretrain_steps, args.steps, args.minilm_steps = 30, 20, 6
        args.max_per_class, args.val_per_play = 40, 10
        args.pretrain_dir += "-quick"

    if args.merge:  # combine runs made by separate invocations (e.g. one process per seed)
        rows = {}
        for f in args.merge:
            for r in earlier_rows(Path(f), args, strict=True):
                rows[(r["condition"], r["seed"])] = r
        out = Path(args.out)
        print(write(out, list(rows.values()), args))
        print(f"wrote {out}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    wanted = [n for n in conditions(Path(), args) if not args.only or n in args.only]
    needs_gpt = any(n != "MiniLM + full" for n in wanted)
    pretrained = pretrain(Path(args.pretrain_dir), args.pretrain_steps) if needs_gpt else Path()
    pretrain_s = time.perf_counter() - t0
    out = Path(args.out if not args.quick else args.out.replace(".json", "-quick.json"))
    rows = earlier_rows(out, args)
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        for name, overrides in conditions(pretrained, args).items():
            if name in wanted:
                rows = [r for r in rows if (r["condition"], r["seed"]) != (name, seed)]
                rows.append(run_condition(name, overrides, seed, args))
                write(out, rows, args)  # after every run: a stopped experiment keeps what it did
    print()
    print(write(out, rows, args))
    print(
        f"\nthis invocation {(time.perf_counter() - t0) / 60:.1f} min (pretraining {pretrain_s:.0f} s of it); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
