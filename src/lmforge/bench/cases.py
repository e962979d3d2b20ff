"""The benchmark cases: their names, which run where, and one call that runs a case.

``lmforge bench`` (and any script) picks cases with :func:`select_cases` and runs each with
:func:`run_case_named`; each returns :class:`~lmforge.bench.harness.CaseResult` s.
"""

from __future__ import annotations

from lmforge.errors import ConfigError

CASES = ("train-tiny", "train-small", "train-bert", "train-gpt2", "generate", "score", "tokenizer", "prepare", "fit")
TRAIN_SHAPES = {
    "train-tiny": "gpt-tiny",
    "train-small": "gpt-small",
    "train-bert": "bert-mlm",
    "train-gpt2": "gpt2-124m",
}
GPU_ONLY = ("train-gpt2",)  # GPT-2 124M: minutes per round on a laptop CPU


def bench_device(device: str = "auto", dtype: str = "auto"):
    """(torch device, dtype) of a benchmark run; fp16 is refused (its training needs loss scaling)."""
    import torch

    from lmforge import device as dev

    d = dev.resolve_device(device)
    if dtype == "int8":
        raise ConfigError("--dtype: int8 is timed by --int8 (against fp32 in the generate and score cases)")
    t = dev.resolve_dtype(dtype, d)
    if t == torch.float16:  # what auto gives on a GPU without bf16
        raise ConfigError(
            "--dtype: the benchmark times bf16 or fp32 (fp16 training needs loss scaling); "
            "this GPU has no bf16: use --dtype fp32"
        )
    return d, t


def select_cases(spec: str | None, device) -> list[str]:
    """The cases of a comma-separated ``spec``; None: all that suit ``device`` (no GPU-only case on
    a CPU). An unknown name is a :class:`~lmforge.errors.ConfigError`."""
    if not spec:
        return [c for c in CASES if device.type == "cuda" or c not in GPU_ONLY]
    cases = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ConfigError(f"--cases: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    return cases


def check_int8(device, dtype) -> None:
    """``--int8`` times int8 against lmforge fp32 on the CPU: refused in one line elsewhere."""
    import torch

    if device.type != "cpu" or dtype != torch.float32:
        raise ConfigError("--int8: int8 is timed on the CPU against fp32; use --device cpu --dtype fp32")


def run_case_named(
    case: str, rounds: int, peak: float | None, smoke: bool, device, dtype, compile: bool = False, int8: bool = False
) -> list:
    """Run one case (``smoke``: the tiniest shapes); ``compile`` adds a torch.compile run of each
    training case; ``int8`` adds to ``generate`` and ``score`` an int8 copy of lmforge's model
    timed against lmforge fp32 (CPU only: :func:`check_int8`)."""
    from lmforge.bench import inference, pipeline, training

    if case.startswith("train-"):
        key = "smoke" if smoke else TRAIN_SHAPES[case]
        return [
            training.train_case(key, rounds, peak, compiled, device, dtype)
            for compiled in ((False, True) if compile else (False,))
        ]
    if case in ("generate", "score"):
        if int8:
            check_int8(device, dtype)
        ours, hf = inference.models(smoke, device, dtype)
        if case == "score":
            shape = (4, 32) if smoke else (32, 256)
            out = [inference.scoring_case(ours, hf, *shape, rounds=rounds, peak=peak)]
            if int8:
                out.append(inference.int8_scoring_case(ours, *shape, rounds=rounds, peak=peak))
            return out
        new_tokens = 8 if smoke else 200
        out = [inference.generation_case(ours, hf, b, new_tokens=new_tokens, rounds=rounds, peak=peak) for b in (1, 8)]
        out += [inference.floor_case(g, ours, b) for g, b in zip(out, (1, 8))]
        if int8:  # batch 1 with the head in int8 and in fp32, batch 8 with it in int8
            out += [
                inference.int8_generation_case(ours, b, head, new_tokens=new_tokens, rounds=rounds, peak=peak)
                for b, head in ((1, True), (1, False), (8, True))
            ]
        return out
    if case == "tokenizer":
        return [pipeline.tokenizer_case("bpe", 512 if smoke else 8192)]
    if case == "prepare":
        return [pipeline.prepare_case("char" if smoke else "bpe", 2048, rounds=1 if smoke else 3)]
    if case == "fit":
        return [pipeline.fit_case(40 if smoke else 240, reference=not smoke)]
    raise ConfigError(f"unknown benchmark case {case!r}; choose from {', '.join(CASES)}")
