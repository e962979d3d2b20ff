"""``lmforge eval``: lm-evaluation-harness tasks on a model; prints the harness's table and writes its JSON."""

from __future__ import annotations

import logging
import sys

from lmforge.eval import HARNESS_MODELS, SHIPPED_TASKS, TAG

COMMAND = "eval"
HELP = "lm-evaluation-harness tasks on a model: the offline Shakespeare tasks, or any installed harness task"


def add_arguments(p) -> None:
    p.add_argument(
        "model",
        help="model directory (lmforge, or HF with a tokenizer.json); with --harness-model hf an "
        "HF directory from lmforge convert to-hf",
    )
    p.add_argument(
        "--tasks",
        default=TAG,
        help=f"comma-separated harness tasks or tags (default: {TAG}, the shipped "
        f"offline tasks {', '.join(SHIPPED_TASKS)})",
    )
    p.add_argument("--num-fewshot", type=int, help="examples in each prompt (default: the task's)")
    p.add_argument("--limit", type=float, help="documents per task, the first ones (a fraction of them when < 1)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument(
        "--dtype", default="fp32", help="fp32 (default) | bf16 | fp16 | int8 (the lmforge model; int8: on the CPU)"
    )
    p.add_argument(
        "--harness-model",
        choices=HARNESS_MODELS,
        default="lmforge",
        help="lmforge (default), or hf: lm-eval's transformers model on an HF directory, reading it as "
        "the lmforge model does (the cross-check)",
    )
    p.add_argument(
        "--model-args",
        default="",
        help="more key=value,... for the harness model (lmforge: max_length, stride, max_gen_toks, seed)",
    )
    p.add_argument("--include-path", action="append", default=[], help="a folder of more task YAML files (repeatable)")
    p.add_argument(
        "--output",
        "-o",
        default="eval_results.json",
        help="where to write the harness's JSON (default eval_results.json)",
    )
    p.add_argument("--log-samples", action="store_true", help="keep every request and answer in the JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the harness's few-shot choice and sampling (default 0)")
    p.add_argument("--verbose", action="store_true", help="show the harness's log messages")


def run(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.eval import evaluate, format_results, require_lm_eval, write_results

    require_lm_eval()
    from lm_eval.utils import simple_parse_args_string

    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    limit = args.limit
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"--limit: must be > 0, got {limit:g}")
        limit = int(limit) if limit >= 1 else limit
    results = evaluate(
        args.model,
        args.tasks,
        harness_model=args.harness_model,
        model_args=simple_parse_args_string(args.model_args),
        num_fewshot=args.num_fewshot,
        limit=limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        log_samples=args.log_samples,
        seed=args.seed,
        include_path=args.include_path,
    )
    print(format_results(results))
    path = write_results(results, args.output)
    print(f"wrote {path}", file=sys.stderr)
    return 0
