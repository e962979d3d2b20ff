"""Which paradigm for which task? The three presets, pretrained on the same plays, each measured on
what it can do, then fine-tuned on the two labelled tasks of the bundled corpus.

Needs the three pretrained runs (each <= 10 min on 2 CPU cores; the script says what is missing):

    lmforge train --preset shakespeare-gpt     # decoder: held-out bits per byte
    lmforge train --preset shakespeare-bert    # encoder: accuracy at the [MASK] positions
    lmforge train --preset shakespeare-t5      # encoder-decoder: span token accuracy, span exact match

then, over ``--seeds``:

- genre (which kind of play is a passage from?), macro-F1 on the held-out plays: the encoder via
  [CLS], pretrained and from scratch (same architecture, random weights, the labelled passages
  alone); the decoder via its last token; the encoder-decoder via its encoder, the mean of its
  output states (``--pooling mean``: span corruption never trains a summary position);
- restoration (put back case and punctuation), chrF and exact match on the held-out plays: the
  encoder-decoder as seq2seq, pretrained and from scratch; the decoder as prompt -> completion.

    python benchmarks/paradigms.py                      # ~40 min on 2 CPU cores
    python benchmarks/paradigms.py --only restore-t5 restore-t5-scratch --seeds 0
    python benchmarks/paradigms.py --pretrain 480 --paradigms encoder --only genre-encoder

Writes ``benchmarks/results/paradigms.json`` (every run, kept across invocations) and prints the
Markdown tables of docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lmforge.finetune as ft

ROOT = Path(__file__).resolve().parent
PRESETS = {
    "decoder": "shakespeare-gpt",
    "encoder": "shakespeare-bert",
    "encoder-decoder": "shakespeare-t5",
    "permutation LM": "shakespeare-xlnet",
}
PRETRAINING_METRICS = {
    "decoder": ("bpb", "loss"),
    "encoder": ("mask_accuracy", "mask_baseline", "mlm_accuracy", "nsp_accuracy"),
    "encoder-decoder": ("span_token_accuracy", "span_exact_tf", "span_exact_match", "loss"),
    "permutation LM": ("l2r_bpb", "hidden_accuracy", "hidden_baseline", "loss"),
}

# Fine-tuning recipes: the same steps, batch and schedule for every model of a task.
GENRE = dict(
    task="classify",
    train_file="shakespeare-genre",
    passage_chars=200,
    max_per_class=300,
    val_per_play=40,
    max_len=64,
    patience=0,
    train=dict(max_steps=300, batch_size=32, lr=5e-4, warmup_steps=30, eval_every=0),
)
RESTORE = dict(
    task="seq2seq",
    train_file="shakespeare-restore",
    passage_chars=120,
    val_per_play=32,
    max_len=64,
    metric="chrf",
    patience=0,
    train=dict(max_steps=400, batch_size=32, lr=1e-3, warmup_steps=40, eval_every=0),
)


def conditions(runs: Path) -> dict[str, dict]:
    enc, dec, s2s = (str(runs / PRESETS[a]) for a in ("encoder", "decoder", "encoder-decoder"))
    return {
        "genre-encoder": dict(GENRE, model=enc),
        "genre-encoder-scratch": dict(GENRE, model=enc, init="scratch"),
        # the mean of the output states: a masked LM without NSP never trains its [CLS] state
        "genre-encoder-mean": dict(GENRE, model=enc, pooling="mean"),
        "genre-encoder-scratch-mean": dict(GENRE, model=enc, init="scratch", pooling="mean"),
        "genre-decoder": dict(GENRE, model=dec, max_len=128),
        "genre-t5": dict(GENRE, model=s2s),  # its encoder, mean-pooled
        "restore-t5": dict(RESTORE, model=s2s),
        "restore-t5-scratch": dict(RESTORE, model=s2s, init="scratch"),
        "restore-decoder": dict(RESTORE, model=dec, task="completion", max_len=128),
    }


def run(name: str, recipe: dict, seed: int) -> dict:
    d = json.loads(json.dumps(recipe))
    d["train"] = dict(ft.FINETUNE_TRAIN_DEFAULTS, **d["train"], seed=seed, progress=False, log_every=50)
    cfg = ft.FinetuneConfig.from_dict({**d, "name": f"{name}-{seed}"})
    t0 = time.perf_counter()
    res = ft.finetune(cfg, save=False, log=lambda s: None)
    metrics = dict(res.metrics)
    shown = "  ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if k in ("macro_f1", "accuracy", "chrf", "exact_match", "bleu")
    )
    print(f"  {name:24s} seed {seed}: {shown}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {
        "condition": name,
        "seed": seed,
        **metrics,
        "seconds": time.perf_counter() - t0,
        "baseline": res.baseline,
        "train_size": res.train_size,
        "val_size": res.val_size,
        "recipe": recipe,
    }


def pretrain_equal_time(runs: Path, seconds: float, threads: int, paradigms: list[str]) -> list[dict]:
    """Each paradigm's preset pretrained for the same wall time (its own recipe, the schedule
    stretched or shortened to the steps that fit, four evaluations)."""
    from equal_time import train_for_seconds
    from lmforge.train.config import RunConfig

    rows = []
    for arch in paradigms:
        preset = PRESETS[arch]
        run = train_for_seconds(RunConfig.from_preset(preset), runs / preset, seconds, threads)
        result = run.result
        print(f"  {preset}: {run.seconds_per_step * 1e3:.0f} ms per step -> {run.steps} steps", flush=True)
        shown = {k: v for k, v in result.metrics.items() if k in PRETRAINING_METRICS[arch]}
        print(f"  {preset}: {result.train_seconds:.0f} s, {result.tokens:,} tokens: {shown}", flush=True)
        rows.append(
            {
                "paradigm": arch,
                "preset": preset,
                "steps": run.steps,
                "tokens": result.tokens,
                "train_seconds": result.train_seconds,
                "threads": threads,
                **result.metrics,
            }
        )
    return rows


def equal_time_table(rows: list[dict]) -> str:
    lines = [
        "| paradigm | preset | steps | tokens | training time | held-out metrics |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        shown = ", ".join(f"{k} {r[k]:.4f}" for k in PRETRAINING_METRICS[r["paradigm"]] if k in r)
        lines.append(
            f"| {r['paradigm']} | {r['preset']} | {r['steps']:,} | {r['tokens'] / 1e6:.1f}M | "
            f"{r['train_seconds'] / 60:.1f} min | {shown} |"
        )
    return "\n".join(lines)


def pretraining_table(runs: Path) -> str:
    lines = ["| paradigm | preset | held-out metrics (final evaluation) | training time |", "|---|---|---|---|"]
    for arch, preset in PRESETS.items():
        path = runs / preset / "metrics.jsonl"
        if not path.is_file():
            lines.append(f"| {arch} | {preset} | (not trained: lmforge train --preset {preset}) | |")
            continue
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        evaluated = [r for r in records if any(k.startswith("val_") for k in r)]
        if not evaluated:
            lines.append(f"| {arch} | {preset} | (training, no evaluation yet) | |")
            continue
        final = evaluated[-1]
        shown = ", ".join(f"{k} {final['val_' + k]:.4f}" for k in PRETRAINING_METRICS[arch] if f"val_{k}" in final)
        secs = max(r.get("elapsed_s", 0) for r in records)
        lines.append(f"| {arch} | {preset} | {shown} | {secs / 60:.1f} min |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    def ms(values):
        return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None

    lines = ["| condition | macro-F1 | accuracy | chrF | exact match | seeds |", "|---|---|---|---|---|---|"]
    for name in conditions(Path()):
        chosen = [r for r in rows if r["condition"] == name]
        if not chosen:
            continue
        cells = []
        for k in ("macro_f1", "accuracy", "chrf", "exact_match"):
            v = ms([r[k] for r in chosen if k in r])
            cells.append(f"{v[0]:.3f} ± {v[1]:.3f}" if v else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(chosen)} |")
    majority = [r["baseline"] for r in rows if r.get("baseline")]
    if majority:
        lines.append(
            f"| genre majority class | {majority[0]['macro_f1']:.3f} | {majority[0]['accuracy']:.3f} | - | - | - |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs", help="the folder holding the three pretrained runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", choices=list(conditions(Path())), help="run only these conditions")
    p.add_argument("--out", default=str(ROOT / "results" / "paradigms.json"))
    p.add_argument(
        "--pretrain",
        type=float,
        metavar="SECONDS",
        help="first pretrain every paradigm's preset for this wall time of training (into --runs)",
    )
    p.add_argument("--threads", type=int, default=1, help="threads per pretraining run (with --pretrain)")
    p.add_argument(
        "--paradigms", nargs="+", choices=list(PRESETS), default=list(PRESETS), help="pretrain only these (--pretrain)"
    )
    args = p.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    if args.pretrain:
        new = pretrain_equal_time(runs, args.pretrain, args.threads, args.paradigms)
        saved = json.loads(out.read_text()) if out.is_file() else saved  # another invocation may have written
        kept = [r for r in saved.get("equal_time", []) if r["paradigm"] not in args.paradigms]
        saved["equal_time"] = sorted(kept + new, key=lambda r: list(PRESETS).index(r["paradigm"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=2) + "\n")
    if saved.get("equal_time"):
        print(equal_time_table(saved["equal_time"]), "\n", flush=True)
    else:
        print(pretraining_table(runs), "\n", flush=True)
    rows = saved.get("runs", [])
    for name, recipe in conditions(runs).items():
        if args.only and name not in args.only:
            continue
        if not (Path(recipe["model"]) / "best" / "config.json").is_file():
            print(f"  {name}: skipped, {recipe['model']} is not trained yet")
            continue
        for seed in args.seeds:
            row = run(name, recipe, seed)
            # read again before writing: another invocation may run other conditions into the same file
            saved = json.loads(out.read_text()) if out.is_file() else saved
            rows = [r for r in saved.get("runs", []) if (r["condition"], r["seed"]) != (name, seed)] + [row]
            out.parent.mkdir(parents=True, exist_ok=True)
            saved.update(runs=rows, pretraining=pretraining_table(runs))
            out.write_text(json.dumps(saved, indent=2) + "\n")
    print()
    print(summary_table(rows))


if __name__ == "__main__":
    main()
