"""``lmforge bench``: lmforge beside HF transformers at the same shapes, interleaved, with ratios and MFU."""

from __future__ import annotations

import json

from lmforge.bench.cases import CASES, GPU_ONLY

COMMAND = "bench"
HELP = "benchmark training, generation, scoring, data preparation and fitting against HF transformers"


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
    p.add_argument(
        "--int8",
        action="store_true",
        help="CPU: also time an int8 copy of lmforge's model in generate and score, against lmforge fp32",
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
    from lmforge.bench import format_table, system_info, write_report
    from lmforge.bench.cases import bench_device, check_int8, run_case_named, select_cases
    from lmforge.bench.harness import LoadMonitor
    from lmforge.hardware import device_peak

    device, dtype = bench_device(args.device, args.dtype)
    cases = select_cases(args.cases, device)
    if args.int8:
        check_int8(device, dtype)
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
            for result in run_case_named(case, rounds, peak, args.smoke, device, dtype, args.compile, args.int8):
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
