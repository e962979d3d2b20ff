"""``lmforge generate``: complete prompts (greedy, sampling, beam search), streaming to the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmforge.errors import DataError

COMMAND = "generate"
HELP = "generate text: greedy, temperature, top-k, top-p, repetition penalty, beam search; streamed"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory (lmforge, or HF with a tokenizer.json)")
    p.add_argument(
        "--prompt", action="append", default=[], help="a prompt (repeatable; the source for an encoder-decoder)"
    )
    p.add_argument("--prompt-file", help="a file with one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate at most (default 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (same as --temperature 0)")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set with probability >= p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens (HF)")
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable; not included)")
    p.add_argument("--seed", type=int, help="random seed of the sampler (default: nondeterministic)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (> 1: beam search)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = sum logprob / length ** this")
    p.add_argument("--batch-size", type=int, help="prompts per batch (default: all)")
    p.add_argument(
        "--no-bos",
        action="store_true",
        help="do not put the start token (the model's text start, else BOS) in front of decoder prompts",
    )
    p.add_argument("--no-stream", action="store_true", help="print each completion when done")
    p.add_argument("--json", action="store_true", help="print one JSON object per completion")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", default="fp32", help="fp32 (default) | bf16 | fp16")


def run(args) -> int:
    from lmforge.infer import generate, load_for_inference
    from lmforge.infer.options import SamplingOptions

    options = SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        batch_size=args.batch_size,
    )  # checked before anything loads or prints
    prompts = list(args.prompt)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        prompts += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError("no prompt: give --prompt TEXT (repeatable) or --prompt-file")
    model, tok = load_for_inference(args.model, args.device, args.dtype)
    stream_ok = not args.no_stream and not args.json and args.num_beams == 1 and len(prompts) == 1
    echo = [stream_ok and model.config.arch == "decoder"]  # the completion continues the prompt

    def show_prompt() -> None:  # with the first new text, so that an error comes alone
        if echo[0]:
            sys.stdout.write(prompts[0])
            echo[0] = False

    def stream(i: int, text: str) -> None:
        show_prompt()
        sys.stdout.write(text)
        sys.stdout.flush()

    results = generate(
        model,
        tok,
        prompts,
        **options.to_dict(),
        stop=args.stop,
        stream=stream if stream_ok else None,
        add_bos=False if args.no_bos else None,
    )
    if stream_ok:
        show_prompt()
        sys.stdout.write("\n")
        print(f"[{len(results[0].token_ids)} tokens, {results[0].finish_reason}]", file=sys.stderr)
        return 0
    for i, c in enumerate(results):
        if args.json:
            print(json.dumps(c.to_dict(), ensure_ascii=False))
        else:
            if len(results) > 1:
                print(f"=== {i} ({len(c.token_ids)} tokens, {c.finish_reason}) ===")
            print(c.prompt + c.text if model.config.arch == "decoder" else c.text)
    return 0
