"""Load benchmark of ``lmforge serve`` (not a test): concurrent streaming clients, one level at a time.

    python benchmarks/serve_load.py runs/shakespeare-gpt/best --clients 1 8 32 --duration 60 -- --max-batch 32

starts ``lmforge serve MODEL --port 0`` with the flags after ``--`` (or measures a server already
running: ``--url http://127.0.0.1:8000``), then for each level runs that many clients for
``--duration`` seconds. Each client loops: one streaming completion (``--prompt-tokens`` token ids
cut from the held-out plays, ``--max-tokens`` new tokens, ``logprobs: 0`` so that every token comes as its own chunk),
then the next. Per level: requests finished and failed, time to first token (TTFT) and inter-token
latency (ITL: the gaps between a request's chunks), p50 / p99, and the aggregate tokens/s (tokens
received during the window / its length). The clients share the machine with the server: on a
small CPU they take some of its time (their CPU seconds are reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np


def prompts(url: str, headers: dict, n: int, tokens: int, max_tokens: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of exactly ``tokens`` token ids (the server's tokenizer, its start token first),
    cut from the held-out plays."""
    import httpx

    from lmforge.data.corpus import shakespeare

    text = "\n".join(d.text for d in shakespeare("val"))
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        start = rng.randrange(0, len(text) - 8 * tokens)
        r = httpx.post(
            f"{url}/tokenize", json={"prompt": text[start : start + 8 * tokens]}, headers=headers, timeout=30
        )
        r.raise_for_status()
        info = r.json()
        if tokens + max_tokens > info["max_model_len"]:
            raise SystemExit(
                f"--prompt-tokens {tokens} + --max-tokens {max_tokens} exceed the model's context "
                f"of {info['max_model_len']}"
            )
        if len(info["tokens"]) >= tokens:
            out.append(info["tokens"][:tokens])
    return out


async def client(http, url: str, body: dict, pool: list, end: float, out: dict, rng: random.Random) -> None:
    while time.monotonic() < end:
        req = {**body, "prompt": rng.choice(pool)}
        t0 = time.monotonic()
        last, first, n = None, None, 0
        try:
            async with http.stream("POST", f"{url}/v1/completions", json=req) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    lp = chunk["choices"][0].get("logprobs") if chunk["choices"] else None
                    if not lp or not lp.get("tokens"):
                        continue
                    now = time.monotonic()
                    if now > end:
                        return  # the window closed mid-request: neither finished nor failed
                    if first is None:
                        first = now - t0
                    else:
                        out["itl"].append(now - last)
                    last = now
                    n += len(lp["tokens"])
                    out["tokens"] += len(lp["tokens"])
            out["ttft"].append(first)
            out["done"] += 1
        except Exception as e:  # noqa: BLE001 - every failure counts, whatever it is
            if time.monotonic() <= end:
                out["failed"] += 1
                out["errors"].append(str(e)[:200])


async def level(url: str, clients: int, duration: float, body: dict, pool: list, key: str | None) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits, headers=headers) as http:
        await http.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 4, "prompt": pool[0]})
        out = {"ttft": [], "itl": [], "tokens": 0, "done": 0, "failed": 0, "errors": []}
        cpu0, t0 = time.process_time(), time.monotonic()
        end = t0 + duration
        await asyncio.gather(*(client(http, url, body, pool, end, out, random.Random(100 + i)) for i in range(clients)))
        cpu = time.process_time() - cpu0

    def pct(xs, q):
        return float(np.percentile(xs, q) * 1e3) if xs else float("nan")

    return {
        "clients": clients,
        "duration_s": duration,
        "requests": out["done"],
        "failed": out["failed"],
        "ttft_p50_ms": pct(out["ttft"], 50),
        "ttft_p99_ms": pct(out["ttft"], 99),
        "itl_p50_ms": pct(out["itl"], 50),
        "itl_p99_ms": pct(out["itl"], 99),
        "tokens_per_s": out["tokens"] / duration,
        "client_cpu_s": cpu,
        "errors": out["errors"][:5],
    }


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lmforge", "serve", model, "--port", "0", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split("listening on ")[1].strip()


def main() -> None:
    argv = sys.argv[1:]
    server_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="model directory (starts a server; or give --url)")
    p.add_argument("--url", help="a running server instead, e.g. http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=60.0, help="seconds per level (default 60)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="tokens per prompt (default 32)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--api-key", default=os.environ.get("LMFORGE_API_KEY"))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if not args.model and not args.url:
        p.error("give a model directory or --url")
    proc, url = (None, args.url) if args.url else start_server(args.model, server_args)
    try:
        import httpx

        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        info = httpx.get(f"{url}/health", timeout=30).json()
        body = {
            "model": info["model"],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "stream": True,
            "logprobs": 0,
        }
        pool = prompts(url, headers, 64, args.prompt_tokens, args.max_tokens)
        results = []
        print(f"server {url}: {info['slots']} batch slots; flags {' '.join(server_args) or '(defaults)'}")
        print(
            f"{'clients':>7} {'requests':>8} {'failed':>6} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>8} "
            f"{'tokens/s':>9} {'client CPU':>10}"
        )
        for n in args.clients:
            r = asyncio.run(level(url, n, args.duration, body, pool, args.api_key))
            results.append(r)
            print(
                f"{n:>7} {r['requests']:>8} {r['failed']:>6} {r['ttft_p50_ms']:>7.1f}ms {r['ttft_p99_ms']:>6.1f}ms "
                f"{r['itl_p50_ms']:>6.1f}ms {r['itl_p99_ms']:>6.1f}ms {r['tokens_per_s']:>9.1f} "
                f"{r['client_cpu_s']:>9.1f}s",
                flush=True,
            )
            for e in r["errors"]:
                print(f"        error: {e}")
        if len(results) > 1 and results[0]["tokens_per_s"] > 0:
            print(
                "throughput vs the first level: "
                + ", ".join(
                    f"{r['clients']} clients {r['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x" for r in results[1:]
                )
            )
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "url": url,
                        "server_args": server_args,
                        "max_tokens": args.max_tokens,
                        "temperature": args.temperature,
                        "results": results,
                    },
                    f,
                    indent=2,
                )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
