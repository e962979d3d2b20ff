"""``lmforge bench``: lmforge beside HF transformers at the same shapes, interleaved, with ratios and MFU."""

from __future__ import annotations

import json

COMMAND = "bench"
HELP = "benchmark training, generation, scoring, data preparation and fitting against HF transformers"

CASES = ("train-tiny", "train-small", "train-bert", "train-gpt2", "generate", "score", "tokenizer", "prepare", "fit")
TRAIN_SHAPES = {
    "train-tiny": "gpt-tiny",
    "train-small": "gpt-small",
    "train-bert": "bert-mlm",
    "train-gpt2": "gpt2-124m",
}
GPU_ONLY = ("train-gpt2",)  # GPT-2 124M: minutes per round on a laptop CPU


def add_arguments(p) -> None:
    p.add_argument(
        "--cases",
        help=f"comma-separated subset of {', '.join(CASES)} (default: all; {', '.join(GPU_ONLY)} only on a GPU)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU that has it, fp32 on the CPU) | fp32 | bf16")
    p.add_argument(
        "--compile", action="store_true", help="also time the training cases with lmforge's model under torch.compile"
    )
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per case, after warm-up")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the tiniest shapes, one round, no all-starts fit reference: checks the harness runs",
    )
    p.add_argument("--json", dest="json_out", default="bench_results/bench.json", help="where to write the report")


def run(args) -> None:
    import torch

    from lmforge import device as dev
    from lmforge.accounting import device_peak
    from lmforge.bench import format_table, system_info, write_report
    from lmforge.bench.harness import LoadMonitor
    from lmforge.errors import ConfigError

    device = dev.resolve_device(args.device)
    dtype = dev.resolve_dtype(args.dtype, device)
    if dtype == torch.float16:  # what auto gives on a GPU without bf16
        raise ConfigError(
            "--dtype: the benchmark times bf16 or fp32 (fp16 training needs loss scaling); "
            "this GPU has no bf16: use --dtype fp32"
        )
    default = [c for c in CASES if device.type == "cuda" or c not in GPU_ONLY]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else default
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ConfigError(f"--cases: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 1 if args.smoke else args.rounds
    # the CPU's peak measured here; a GPU's from the device table, dense bf16 (no MFU for fp32 there)
    peak = device_peak(device) if device.type != "cuda" or dtype != torch.float32 else None
    info = system_info()
    info.update(peak_flops=peak, bench_device=str(device), bench_dtype=str(dtype).removeprefix("torch."))
    where = f"GPU {info['gpu']}, table peak" if device.type == "cuda" else "measured peak"
    print(
        f"{info['date']}  {info['processor']}  {info['cpus']} CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), transformers {info['transformers']}; {dev.describe(device, dtype)}; "
        + (f"{where} {peak / 1e12:.4g} TFLOP/s" if peak else "no peak known for this device")
    )
    results = []
    with LoadMonitor() as load:
        for case in cases:
            for result in _run(case, rounds, peak, args.smoke, device, dtype, args.compile):
                results.append(result)
                print(format_table([result]).splitlines()[-1], flush=True)
    info["other_processes_load_cores"] = load.other_cores
    print()
    print(format_table(results))
    if load.other_cores is not None:
        print(f"CPU load from other processes during the run: {load.other_cores:.2f} cores")
    path = write_report(results, args.json_out, info)
    print(f"wrote {path}")
    if any("DIFFER" in r.check for r in results):
        return 1
    print(json.dumps({r.name: round(r.ratio, 3) for r in results if r.ratio}, indent=None))


def _run(case: str, rounds: int, peak: float | None, smoke: bool, device, dtype, compile: bool) -> list:
    from lmforge.bench import inference, pipeline, training

    if case.startswith("train-"):
        key = "smoke" if smoke else TRAIN_SHAPES[case]
        return [
            training.train_case(key, rounds, peak, compiled, device, dtype)
            for compiled in ((False, True) if compile else (False,))
        ]
    if case in ("generate", "score"):
        ours, hf = inference.models(smoke, device, dtype)
        if case == "score":
            return [inference.scoring_case(ours, hf, *((4, 32) if smoke else (32, 256)), rounds=rounds, peak=peak)]
        new_tokens = 8 if smoke else 200
        return [inference.generation_case(ours, hf, b, new_tokens=new_tokens, rounds=rounds, peak=peak) for b in (1, 8)]
    if case == "tokenizer":
        return [pipeline.tokenizer_case("bpe", 512 if smoke else 8192)]
    if case == "prepare":
        return [pipeline.prepare_case("char" if smoke else "bpe", 2048, rounds=1 if smoke else 3)]
    return [pipeline.fit_case(40 if smoke else 240, reference=not smoke)]
