"""Why does a small BERT sit on the unigram plateau? Train masked-LM variants and watch what moves.

Each run trains an encoder on the bundled plays with a plain loop (the engine's optimizer groups and
schedule) and, every ``--every`` steps, records on fixed held-out batches (masking 15%):

- ``mask_accuracy`` at the [MASK] positions and ``mask_baseline``, always answering the most
  frequent training token there (a model on the plateau scores exactly the baseline);
- attention entropy per layer, divided by log(number of keys): 1.0 is uniform attention, which
  gives every position the same average of the window and so no way to tell its neighbours;
- the gradient norm of each block and of the embeddings (vanishing or exploding layers show here).

    python benchmarks/mlm_diagnosis.py --tag bert-recipe                       # the original recipe
    python benchmarks/mlm_diagnosis.py --tag prenorm-rope-p30 --norm pre --positions rope --lr 2e-3 --mask 0.3
    python benchmarks/mlm_diagnosis.py --plot docs/img/mlm_plateau.png       # curves of every recorded run

Records go to ``benchmarks/results/mlm_diagnosis/<tag>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.data import make_batches, open_dataset, prepare
from lmforge.models import build_model
from lmforge.train.config import TrainConfig
from lmforge.train.objective_metrics import masked_lm_metrics, most_frequent_token
from lmforge.train.optim import lr_at, param_groups
from lmforge.train.run import fit_model_to_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "mlm_diagnosis"


@torch.no_grad()
def attention_entropy(model, batches) -> list[float]:
    """Mean attention entropy of each layer over the batches' real query/key positions, / log(keys)."""
    sums: list[float] = []
    for b in batches:
        out = model(b["input_ids"], b.get("attention_mask"), output_attentions=True)
        keys = b["attention_mask"].sum(-1).float() if "attention_mask" in b else None
        for i, a in enumerate(out.attentions):  # (B, H, T, T)
            h = -(a.clamp_min(1e-12).log() * a).sum(-1)  # (B, H, T)
            norm = (keys if keys is not None else torch.full(h.shape[:1], h.shape[-1], dtype=h.dtype)).log()
            value = float((h / norm[:, None, None]).mean())
            sums.append(value) if len(sums) <= i else sums.__setitem__(i, sums[i] + value)
    return [round(s / len(batches), 4) for s in sums]


def block_grad_norms(model) -> dict[str, float]:
    norms: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            parts = name.split(".")
            key = ".".join(parts[1:3]) if "blocks" in parts else parts[1] if parts[0] == "encoder" else parts[0]
            norms[key] = norms.get(key, 0.0) + float(p.grad.pow(2).sum())
    return {k: round(math.sqrt(v), 4) for k, v in norms.items()}


def run(args) -> None:
    path = Path(args.data)
    if not (path / "meta.json").is_file():
        prepare(["shakespeare"], path, tokenizer="wordpiece", vocab_size=4096, progress=False)
    ds = open_dataset(path)
    tok = ds.tokenizer
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = fit_model_to_tokenizer(
        ModelConfig.from_preset(
            "bert-tiny",
            max_positions=args.seq_len,
            n_layer=args.layers,
            d_model=args.width,
            n_head=args.heads,
            norm_position=args.norm,
            positions=args.positions,
            nsp_head=False,
        ),
        tok,
    )
    model = build_model(cfg)
    train = make_batches("mlm", ds, args.batch, args.seq_len, seed=args.seed, mlm_probability=args.mask)
    val = make_batches("mlm", ds, 64, args.seq_len, seed=99, split="val", mlm_probability=0.15)
    val_batches = [val.next_batch() for _ in range(4)]
    recipe = TrainConfig(
        max_steps=args.steps, lr=args.lr, warmup_steps=args.warmup, schedule="linear", min_lr_ratio=0.0
    )
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    metric = masked_lm_metrics(tok.mask_id, most_frequent_token(ds.split("train"), tok.vocab_size, tok.special_ids))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.tag}.jsonl"
    out.write_text("")
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, recipe)
        loss = model(**train.next_batch()).loss
        loss.backward()
        grads = block_grad_norms(model) if step % args.every == 0 else None
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if grads is None:
            continue
        model.eval()
        with torch.no_grad():
            sums = [metric(b, model(**b)) for b in val_batches]
        model.train()
        rec = {
            "step": step,
            "seconds": round(time.perf_counter() - t0),
            "train_loss": round(float(loss), 4),
            **{
                k: round(sum(s[k][0] for s in sums) / sum(s[k][1] for s in sums), 4)
                for k in ("mlm_loss", "mask_accuracy", "mask_baseline")
            },
            "entropy": attention_entropy(model, val_batches[:2]),
            "grad_norm": grads,
        }
        print(args.tag, json.dumps(rec), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def plot(png: str) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_ent) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted(RESULTS.glob("*.jsonl")):
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if not recs:
            continue
        steps = [r["step"] for r in recs]
        ax_acc.plot(steps, [100 * r["mask_accuracy"] for r in recs], marker="o", label=path.stem)
        if "entropy" in recs[0]:  # records of a whole preset run (from its metrics.jsonl) have none
            ax_ent.plot(steps, [min(r["entropy"]) for r in recs], marker="o", label=path.stem)
    ax_acc.axhline(100 * recs[0]["mask_baseline"], color="grey", ls="--", label="most frequent token")
    ax_acc.set(xlabel="step", ylabel="accuracy at [MASK] (%)", title="held-out accuracy at [MASK] positions")
    ax_ent.set(xlabel="step", ylabel="lowest layer entropy / log(keys)", title="attention entropy (1 = uniform)")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default="bert-recipe")
    p.add_argument("--data", default="data/shakespeare-wordpiece4096")
    p.add_argument("--norm", default="post", choices=("pre", "post"))
    p.add_argument("--positions", default="learned", choices=("learned", "rope", "sinusoidal"))
    p.add_argument("--mask", type=float, default=0.15, help="training masking rate")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", metavar="PNG", help="only draw the recorded runs' curves")
    args = p.parse_args()
    plot(args.plot) if args.plot else run(args)


if __name__ == "__main__":
    main()
