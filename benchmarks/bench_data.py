"""Data-layer throughput on the bundled corpus (not a test).

For each tokenizer kind: training time on the train split (4.2 MB), encoding throughput over the
whole corpus (5.0 MB), and ``prepare`` end to end (read + strip Markdown + tokenize + write,
with the tokenizer already trained) in MB/s; then batches per second of each objective.

    python benchmarks/bench_data.py                      # all kinds, vocabulary 8192
    python benchmarks/bench_data.py --kinds bpe char --json
    taskset -c 0,1 python benchmarks/bench_data.py       # as on a 2-core laptop
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lmforge.data import corpus, make_batches, prepare
from lmforge.text import utf8_len
from lmforge.tokenizer import KINDS, train_tokenizer


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def cpu_timed(fn):
    """Wall and CPU seconds (all threads): on a shared machine CPU time is the steadier measure."""
    cpu = time.process_time()
    result, wall = timed(fn)
    return result, wall, time.process_time() - cpu


def bench_kind(kind: str, vocab_size: int, root: Path) -> dict:
    train_texts = [d.text for d in corpus.shakespeare("train")]
    all_texts = [d.text for d in corpus.shakespeare("all")]
    mb = sum(map(utf8_len, all_texts)) / 1e6
    sentinels = 16 if kind != "unigram" else None
    tok, train_s = timed(lambda: train_tokenizer(kind, train_texts, vocab_size, sentinels=sentinels))
    ids, encode_s, encode_cpu = cpu_timed(lambda: tok.encode_batch(all_texts))
    corpus._bundled_documents.cache_clear()  # end to end includes reading the plays again
    ds, prepare_s, prepare_cpu = cpu_timed(lambda: prepare("shakespeare", root / kind, tok, progress=False))
    return {
        "kind": kind,
        "vocab_size": tok.vocab_size,
        "train_s": round(train_s, 2),
        "encode_mb_s": round(mb / encode_s, 2),
        "encode_mb_per_cpu_s": round(mb / encode_cpu, 2),
        "prepare_mb_s": round(mb / prepare_s, 2),
        "prepare_mb_per_cpu_s": round(mb / prepare_cpu, 2),
        "tokens": sum(map(len, ids)),
        "bytes_per_token": round(mb * 1e6 / sum(map(len, ids)), 3),
        "dataset": ds,
    }


def bench_objectives(ds, batch_size: int, seq_len: int, steps: int = 20) -> dict:
    out = {}
    for objective in ("causal", "mlm", "mlm+nsp", "span", "infill"):
        sampler = make_batches(objective, ds, batch_size, seq_len, seed=0)
        sampler.next_batch()
        _, seconds = timed(lambda sampler=sampler: [sampler.next_batch() for _ in range(steps)])
        out[objective] = round(steps / seconds, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    (_, load_s) = timed(lambda: corpus.shakespeare("all"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            rows.append(bench_kind(kind, args.vocab_size, Path(tmp)))
        objectives = bench_objectives(rows[0]["dataset"], args.batch_size, args.seq_len)
    for row in rows:
        row.pop("dataset")
    result = {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "corpus_load_s": round(load_s, 2),
        "kinds": rows,
        "objectives_batches_per_s": {
            "kind": args.kinds[0],
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            **objectives,
        },
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"bundled corpus: read + strip in {load_s:.2f}s on {result['cpus']} CPUs")
    print(
        f"{'kind':10} {'vocab':>6} {'train s':>8} {'encode MB/s':>12} {'(per CPU-s)':>12} "
        f"{'prepare MB/s':>13} {'(per CPU-s)':>12} {'bytes/token':>12}"
    )
    for r in rows:
        print(
            f"{r['kind']:10} {r['vocab_size']:>6} {r['train_s']:>8.2f} {r['encode_mb_s']:>12.2f} "
            f"{r['encode_mb_per_cpu_s']:>12.2f} {r['prepare_mb_s']:>13.2f} {r['prepare_mb_per_cpu_s']:>12.2f} "
            f"{r['bytes_per_token']:>12.3f}"
        )
    print(
        f"batches/s ({args.kinds[0]}, {args.batch_size} x {args.seq_len}): "
        + ", ".join(f"{k} {v}" for k, v in objectives.items())
    )


if __name__ == "__main__":
    main()
