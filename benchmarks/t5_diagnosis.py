"""What has a span-corruption model learned to look at? Probes of a trained encoder-decoder run.

On fixed held-out span-corruption batches (the run's own data and options) it reports:

- ``span_token_accuracy`` split into the first token of each span (which only the source can tell:
  the decoder has just read the sentinel) and the later ones (which the span's own prefix helps);
- ``sentinel_lookup``: for each decoder position whose input is sentinel ``<extra_id_k>``, the
  cross-attention weight on the encoder position holding the same sentinel, per layer (the best
  head, averaged over positions). The first token of a span can only come from there; a model that
  has not learned the lookup spreads its cross-attention (1 / source length ~ 0.02);
- the entropy of the encoder's self-attention and of the decoder's cross-attention per layer,
  divided by log(keys): 1.0 is uniform;
- ``loss`` against ``loss_wrong_source``, the loss of the same targets when each row reads the
  source of the next row in the batch: equal losses mean the decoder does not use its source.

    python benchmarks/t5_diagnosis.py runs/shakespeare-t5            # a run directory (its best/)
    python benchmarks/t5_diagnosis.py runs/a runs/b --batches 4 --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lmforge.data import make_batches, open_dataset
from lmforge.models import load_model
from lmforge.train.config import RunConfig
from lmforge.train.run import dataset_dir, eval_objective_options


def _entropy(weights: torch.Tensor, key_mask: torch.Tensor) -> float:
    """Mean entropy / log(real keys) of (B, H, T, S) attention, ``key_mask`` (B, S) True = real key."""
    h = -(weights.clamp_min(1e-12).log() * weights).sum(-1)  # (B, H, T)
    keys = key_mask.sum(-1).clamp_min(2).float().log()  # (B,)
    return float((h / keys[:, None, None]).mean())


@torch.no_grad()
def probe(run_dir: Path, batches: int = 4, batch_size: int = 64) -> dict:
    cfg = RunConfig.from_file(run_dir / "config.yaml")
    dataset = open_dataset(dataset_dir(cfg))
    tok = dataset.tokenizer
    model = load_model(run_dir / "best").eval()
    sentinels = torch.tensor(tok.sentinel_ids)
    val = make_batches(
        "span",
        dataset,
        batch_size,
        cfg.data.seq_len,
        seed=cfg.train.seed + 1,
        split="val",
        **eval_objective_options(cfg),
    )
    first = [0, 0]
    later = [0, 0]
    lookup: list[list[float]] = []
    losses = [0.0, 0.0]
    enc_entropy: list[list[float]] = []
    cross_entropy: list[list[float]] = []
    for _ in range(batches):
        b = val.next_batch()
        out = model(**b, output_attentions=True)
        wrong = {**b, "input_ids": b["input_ids"].roll(1, 0), "attention_mask": b["attention_mask"].roll(1, 0)}
        losses[0] += float(out.loss) / batches
        losses[1] += float(model(**wrong).loss) / batches
        labels, dec_in = b["labels"], b["decoder_input_ids"]
        is_sentinel_in = torch.isin(dec_in, sentinels)  # (B, T): the decoder just read <extra_id_k>
        target = (labels != -100) & ~torch.isin(labels, sentinels) & (labels != tok.eos_id)
        right = out.logits.argmax(-1) == labels
        for sel, acc in ((target & is_sentinel_in, first), (target & ~is_sentinel_in, later)):
            acc[0] += int((right & sel).sum())
            acc[1] += int(sel.sum())
        src_mask = b["attention_mask"].bool()
        enc_entropy.append([_entropy(a, src_mask) for a in out.encoder_attentions])
        cross_entropy.append([_entropy(a, src_mask) for a in out.cross_attentions])
        # the encoder position of the same sentinel, for each decoder position that reads one
        rows, cols = is_sentinel_in.nonzero(as_tuple=True)
        match = b["input_ids"][rows] == dec_in[rows, cols][:, None]  # (N, S)
        has = match.any(-1)
        src_pos = match.float().argmax(-1)
        per_layer = []
        for a in out.cross_attentions:  # (B, H, T, S)
            w = a[rows, :, cols, :]  # (N, H, S)
            on_match = w.gather(-1, src_pos[:, None, None].expand(-1, w.shape[1], 1)).squeeze(-1)  # (N, H)
            per_layer.append(float(on_match[has].max(-1).values.mean()))
        lookup.append(per_layer)

    def mean(rows):
        return [round(sum(col) / len(col), 4) for col in zip(*rows)]

    return {
        "run": str(run_dir),
        "first_token_accuracy": round(first[0] / max(first[1], 1), 4),
        "later_token_accuracy": round(later[0] / max(later[1], 1), 4),
        "span_token_accuracy": round((first[0] + later[0]) / max(first[1] + later[1], 1), 4),
        "loss": round(losses[0], 4),
        "loss_wrong_source": round(losses[1], 4),
        "sentinel_lookup": mean(lookup),
        "encoder_entropy": mean(enc_entropy),
        "cross_entropy": mean(cross_entropy),
        "uniform_weight": round(1 / cfg.data.seq_len, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories of span-corruption pretraining")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--json", help="append one JSON line per run to this file")
    args = p.parse_args()
    for run in args.runs:
        rec = probe(run, args.batches)
        print(json.dumps(rec))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
