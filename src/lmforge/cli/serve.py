"""``lmforge serve``: an OpenAI-compatible HTTP server with continuous batching (the [serve] extra)."""

from __future__ import annotations

from lmforge.cli.common import add_device_arguments

COMMAND = "serve"
HELP = "serve a model over OpenAI's HTTP API (completions, chat, streaming) with continuous batching"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory (lmforge, or HF with a tokenizer.json)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine "
        "only; 0.0.0.0 opens it to the network, so set --api-key)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: the LMFORGE_API_KEY environment variable, else no key)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (batch slots; default 8)")
    p.add_argument(
        "--no-batch-invariant",
        dest="batch_invariant",
        action="store_false",
        help="run each decode step on the running rows only (faster at low load; a request's float "
        "rounding, and so rarely its tokens, then depends on what else runs)",
    )
    p.add_argument("--max-tokens", type=int, help="new tokens per choice at most (default: the model's context)")
    p.add_argument("--max-n", type=int, default=8, help="choices per prompt at most (default 8)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="request body bytes at most (default 1 MiB)")
    p.add_argument("--max-waiting", type=int, default=256, help="requests waiting for a slot before 429 (default 256)")
    p.add_argument("--model-name", help="the model id clients send (default: MODEL as given)")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM / Ctrl-C before they are cancelled (default 30)",
    )
    add_device_arguments(p)
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")


def run(args) -> int:
    import os

    from lmforge.errors import LMForgeError
    from lmforge.serve.app import require_extra

    require_extra()
    from lmforge.serve import ServeConfig, serve

    for name in ("max_batch", "max_n", "max_body", "max_waiting"):
        if getattr(args, name) < 1:
            raise LMForgeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise LMForgeError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    config = ServeConfig(
        api_key=args.api_key or os.environ.get("LMFORGE_API_KEY") or None,
        max_batch=args.max_batch,
        max_tokens=args.max_tokens,
        max_n=args.max_n,
        max_body_bytes=args.max_body,
        max_waiting=args.max_waiting,
        model_name=args.model_name,
        batch_invariant=args.batch_invariant,
    )
    serve(
        args.model,
        args.host,
        args.port,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level,
        config=config,
        device=args.device,
        dtype=args.dtype,
    )
    return 0
