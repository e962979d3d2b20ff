"""Which recipe switches make ``shakespeare-gpt`` better per second of training?

Each condition is the preset with one switch (or a combination) turned on, trained for the same
wall time (its step timed by a calibration run, so a slower step pays with fewer steps), scored by
held-out bits per byte on the six held-out plays:

    python benchmarks/recipe.py --seconds 60 200 --threads 2            # every switch, ~50 min
    python benchmarks/recipe.py --only baseline muon --seeds 0 1 2 --seconds 60
    python benchmarks/recipe.py --combine muon relu2 --seconds 60 200   # a combination as one condition
    python benchmarks/recipe.py --report --plot docs/img/recipe.png     # the table of the saved runs

On a 2-core machine two screens can run side by side at ``--threads 1`` (one per core, ``taskset``)
with the seconds doubled; the final figures want ``--threads 2`` on a quiet machine.

Writes ``benchmarks/results/recipe.json`` (every run, kept across invocations), prints the Markdown
table of docs/training.md and draws ``--plot`` (bits per byte against each switch).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from equal_time import seconds_per_step, train_for_seconds
from lmforge.train.config import RunConfig

ROOT = Path(__file__).resolve().parent
SWITCHES = {
    "baseline": {},
    "muon": {"train.optimizer": "muon"},
    "qk_norm": {"model.qk_norm": True},
    "relu2": {"model.activation": "relu2"},
    "zero_init_proj": {"model.zero_init_proj": True},
    "untied": {"model.tie_embeddings": False},
    "logit_softcap": {"model.logit_softcap": 30.0},
    "wsd": {"train.schedule": "wsd"},
    "doc_mask": {"data.doc_mask": True},
}


# The screen's base: the preset as it was screened (AdamW), so that every switch, Muon included, is
# measured against the same run now that the preset trains with Muon.
SCREEN_BASE = {"train.optimizer": "adamw"}


def condition_config(preset: str, name: str, seed: int) -> RunConfig:
    changes = {**SCREEN_BASE, "train.seed": seed}
    for switch in name.split("+"):
        changes.update(SWITCHES[switch])
    return RunConfig.from_preset(preset).override(changes)


def table(rows: list[dict], threads: int) -> str:
    chosen = [r for r in rows if r["threads"] == threads]
    budgets = sorted({r["seconds"] for r in chosen})
    names = list(dict.fromkeys(r["condition"] for r in chosen))
    mean = {}
    for r in chosen:
        mean.setdefault((r["condition"], r["seconds"]), []).append(r["bpb"])
    head = " | ".join(f"bpb after {s:g} s | trained s | vs baseline" for s in budgets)
    lines = [f"| condition | ms per step | {head} | seeds |", "|---|---" + "|---|---|---" * len(budgets) + "|---|"]
    for name in names:
        step = statistics.mean(r["seconds_per_step"] for r in chosen if r["condition"] == name)
        cells = []
        for s in budgets:
            got, base = mean.get((name, s)), mean.get(("baseline", s))
            if not got:
                cells += ["", "", ""]
                continue
            spread = f" ± {statistics.stdev(got):.3f}" if len(got) > 1 else ""
            cells.append(f"{statistics.mean(got):.3f}{spread}")
            # the step is timed before the run, so the time really trained shows how equal it was
            trained = [r["train_seconds"] for r in chosen if r["condition"] == name and r["seconds"] == s]
            cells.append(f"{statistics.mean(trained):.0f}")
            cells.append(f"{statistics.mean(got) - statistics.mean(base):+.3f}" if base else "")
        seeds = max(len(mean.get((name, s), [])) for s in budgets)
        lines.append(f"| {name} | {step * 1e3:.0f} | {' | '.join(cells)} | {seeds} |")
    return "\n".join(lines)


def plot(rows: list[dict], threads: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["threads"] == threads]
    budgets = sorted({r["seconds"] for r in chosen})
    names = list(dict.fromkeys(r["condition"] for r in chosen))
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 0.45 * len(names) + 1.5), squeeze=False)
    for ax, s in zip(axes[0], budgets, strict=True):
        values = [[r["bpb"] for r in chosen if r["condition"] == n and r["seconds"] == s] for n in names]
        shown = [(n, v) for n, v in zip(names, values, strict=True) if v]
        ax.barh(
            [n for n, _ in shown],
            [statistics.mean(v) for _, v in shown],
            xerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in shown],
        )
        base = [statistics.mean(v) for n, v in shown if n == "baseline"]
        if base:
            ax.axvline(base[0], color="k", lw=0.8, ls="--")
        lo = min(statistics.mean(v) for _, v in shown)
        ax.set_xlim(lo - 0.1, max(statistics.mean(v) for _, v in shown) + 0.05)
        ax.invert_yaxis()
        ax.set_title(f"after {s:g} s of training ({threads} thread{'s' if threads > 1 else ''})")
        ax.set_xlabel("held-out bits per byte (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="shakespeare-gpt")
    p.add_argument("--only", nargs="+", choices=list(SWITCHES), help="run only these switches")
    p.add_argument("--combine", nargs="+", choices=list(SWITCHES)[1:], help="run these switches together")
    p.add_argument("--seconds", nargs="+", type=float, default=[60.0, 200.0], help="training wall times")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/recipe")
    p.add_argument("--out", default=str(ROOT / "results" / "recipe.json"))
    p.add_argument("--plot", default=None, help="PNG of the table (default: none)")
    p.add_argument("--report", action="store_true", help="only print the table (and --plot) of the saved runs")
    args = p.parse_args()

    names = ["+".join(args.combine)] if args.combine else (args.only or list(SWITCHES))
    names = [] if args.report else names
    runs, out = Path(args.runs), Path(args.out)
    for name in names:
        per_step = None
        for seconds in args.seconds:
            for seed in args.seeds:
                cfg = condition_config(args.preset, name, seed)
                folder = runs / f"{name}-{seconds:g}s-seed{seed}"
                if per_step is None:  # one calibration per condition
                    per_step = seconds_per_step(cfg, runs / f"calibrate-{name}", args.threads)
                run = train_for_seconds(cfg, folder, seconds, args.threads, per_step=per_step)
                bpb = run.result.metrics["bpb"]
                print(f"  {name:<28} {seconds:>5g} s seed {seed}: {run.steps} steps, bpb {bpb:.4f}", flush=True)
                row = dict(
                    condition=name,
                    seconds=seconds,
                    seed=seed,
                    threads=args.threads,
                    steps=run.steps,
                    seconds_per_step=per_step,
                    train_seconds=run.result.train_seconds,
                    bpb=bpb,
                )
                # read again before writing: another invocation may write other conditions
                saved = json.loads(out.read_text()) if out.is_file() else {"preset": args.preset, "runs": []}
                key = (name, seconds, seed, args.threads)
                saved["runs"] = [
                    r for r in saved["runs"] if (r["condition"], r["seconds"], r["seed"], r["threads"]) != key
                ] + [row]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(saved, indent=2) + "\n")
    saved = json.loads(out.read_text())
    print()
    print(table(saved["runs"], args.threads))
    if args.plot:
        plot(saved["runs"], args.threads, Path(args.plot))


if __name__ == "__main__":
    main()
