"""Is ``lmforge train --budget`` optimal on this machine? The planned model and models of other
sizes (``--scale``: the same plan, another size, the same wall time at its own measured rate, the
planner's batch and learning rate) are all trained, and their held-out losses compared with each
other and with the law's predictions:

    python benchmarks/budget_check.py --budget 5m                 # 0.5x, 1x, 2x: about 20 minutes
    python benchmarks/budget_check.py --budget 5m --scales 1 --preset shakespeare-gpt

Run it on a quiet machine: the plan turns seconds into tokens with the rates it measures first.
Writes ``benchmarks/results/budget-<budget>.json`` (each run's plan and result) and prints the
Markdown table of docs/planning.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lmforge.accounting import count_params
from lmforge.config import ModelConfig

ROOT = Path(__file__).resolve().parent


def train(preset: str, budget: str, scale: float, runs: Path, extra: list[str]) -> dict:
    out = runs / f"{preset}-{budget}-x{scale:g}"
    cmd = ["lmforge", "train", "--preset", preset, "--budget", budget, "--scale", f"{scale:g}"]
    cmd += ["--out", str(out), "--overwrite", "--train.progress", "false", "--train.sample_tokens", "0", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / "budget.json").read_text(encoding="utf-8"))


def table(records: dict[float, dict]) -> str:
    best = min(r["achieved_loss"] for r in records.values())
    lines = [
        "| size | shape | parameters | steps | tokens | trained s | held-out loss (nats/token) | bits/byte "
        "| vs best | predicted | predicted / achieved - 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scale, r in sorted(records.items()):
        m, got = r["config"]["model"], r["achieved_loss"]
        pred = r["predicted_loss_at_trained_tokens"]
        params = count_params(ModelConfig.from_dict(m)).total
        lines.append(
            f"| {scale:g}x | L{m['n_layer']}-d{m['d_model']} | {params:,} | {r['steps']:,} | {r['tokens'] / 1e6:.2f}M "
            f"| {r['train_seconds']:.0f} | {got:.4f} | {r['metrics'].get('bpb', float('nan')):.4f} "
            f"| {got / best - 1:+.2%} | {pred:.4f} | {pred / got - 1:+.2%} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="5m")
    p.add_argument("--preset", default="shakespeare-gpt")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.5, 2.0])
    p.add_argument("--runs", default="runs/budget-check")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/budget-<budget>.json)")
    args, extra = p.parse_known_args()
    out = Path(args.out or ROOT / "results" / f"budget-{args.budget}.json")
    records = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    for scale in args.scales:
        records[f"{scale:g}"] = train(args.preset, args.budget, scale, Path(args.runs), extra)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=2, default=str) + "\n", encoding="utf-8")
    print(table({float(k): v for k, v in records.items()}))


if __name__ == "__main__":
    sys.exit(main())
