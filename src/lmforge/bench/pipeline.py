"""Cases without a reference library: tokenizer training, ``prepare`` throughput, the scaling-law fit."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from lmforge.bench.harness import CaseResult, run_case


def tokenizer_case(kind: str = "bpe", vocab_size: int = 8192, rounds: int = 1) -> CaseResult:
    from lmforge.data.corpus import shakespeare
    from lmforge.tokenizer import train_tokenizer

    texts = [d.text for d in shakespeare("train")]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    result = run_case(
        f"train tokenizer ({kind} {vocab_size})",
        "MB",
        mb,
        lambda: train_tokenizer(kind, texts, vocab_size),
        rounds=rounds,
        warmup=0,
    )
    result.notes["seconds"] = min(result.ours_times)
    return result


def prepare_case(kind: str = "bpe", vocab_size: int = 2048, rounds: int = 3) -> CaseResult:
    """``prepare`` end to end on the bundled corpus with a trained tokenizer: read the plays and strip
    their Markdown (not from a cache), tokenize, write."""
    from lmforge.data import corpus, prepare
    from lmforge.data.corpus import shakespeare
    from lmforge.tokenizer import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    tok_file = tmp / "tokenizer.json"
    train_tokenizer(kind, [d.text for d in shakespeare("train")], vocab_size).save(tok_file)
    mb = sum(len(d.text.encode()) for d in shakespeare("all")) / 1e6

    def run():
        corpus._bundled_documents.cache_clear()
        prepare(["shakespeare"], tmp / "ds", tokenizer=str(tok_file), overwrite=True, progress=False)

    try:
        return run_case(f"prepare shakespeare ({kind} {vocab_size})", "MB", mb, run, rounds=rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fit_case(n_points: int = 240, rounds: int = 1, reference: bool = True) -> CaseResult:
    """Approach 3 with Chinchilla's 4,500-start grid: the fast path vs refining every start (about
    a minute on 2 cores; ``reference=False`` leaves it out)."""
    import numpy as np

    from lmforge.plan.fit import fit_parametric
    from lmforge.plan.runs import synthetic_runs

    runs = synthetic_runs("epoch", sizes=n_points // 8, seed=0)
    fast = fit_parametric(runs)
    if not reference:
        result = run_case(
            f"fit approach 3 ({len(runs)} points)",
            "fits",
            1,
            lambda: fit_parametric(runs),
            rounds=rounds,
            warmup=0,
            check=f"Huber {fast.objective:.3e}",
        )
        result.notes["seconds"] = float(np.median(result.ours_times))
        return result
    t0 = time.perf_counter()
    plain = fit_parametric(runs, top_k=None)
    plain_s = time.perf_counter() - t0
    result = run_case(
        f"fit approach 3 ({len(runs)} points)",
        "fits",
        1,
        lambda: fit_parametric(runs),
        rounds=rounds,
        warmup=0,
        check=f"|dHuber| vs all starts {abs(fast.objective - plain.objective):.1e}",
    )
    result.ref_rate, result.ratio = 1 / plain_s, plain_s / float(np.median(result.ours_times))
    result.notes.update(
        seconds=float(np.median(result.ours_times)),
        plain_multistart_seconds=plain_s,
        huber_fast=fast.objective,
        huber_plain=plain.objective,
    )
    return result
