"""``lmforge generate``: complete prompts (greedy, sampling, beam search), streaming to the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmforge.cli.common import add_device_arguments, add_sampling_arguments, sampling_options
from lmforge.errors import DataError

COMMAND = "generate"
HELP = "generate text: greedy, temperature, top-k, top-p, repetition penalty, beam search; streamed"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory (lmforge, or HF with a tokenizer.json)")
    p.add_argument(
        "--prompt", action="append", default=[], help="a prompt (repeatable; the source for an encoder-decoder)"
    )
    p.add_argument("--prompt-file", help="a file with one prompt per line")
    add_sampling_arguments(p)
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable; not included)")
    p.add_argument(
        "--no-bos",
        action="store_true",
        help="do not put the start token (the model's text start, else BOS) in front of decoder prompts",
    )
    p.add_argument("--no-stream", action="store_true", help="print each completion when done")
    p.add_argument("--json", action="store_true", help="print one JSON object per completion")
    add_device_arguments(p)


def run(args) -> int:
    from lmforge.infer import generate, load_for_inference

    options = sampling_options(args)  # checked before anything loads or prints
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
        stop=args.stop,
        stream=stream if stream_ok else None,
        add_bos=False if args.no_bos else None,
        options=options,
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
