"""lmforge serve: a real uvicorn server on a free loopback port, driven with the official openai
client (and httpx / lm-evaluation-harness); continuous batching checked on the engine itself."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import build_model, save_model

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from lmforge.infer.options import SamplingOptions  # noqa: E402
from lmforge.serve import Engine, Job, SamplingParams, create_app  # noqa: E402
from lmforge.serve.engine import Delta, Failed, Finished  # noqa: E402
from lmforge.serve.server import bind  # noqa: E402

KEY = "test-key"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _params(max_tokens=16, logprobs=None, **options) -> SamplingParams:
    return SamplingParams(max_tokens, SamplingOptions(**options), logprobs=logprobs)


# ---- fixtures: tiny models and real servers ------------------------------------------------------


@pytest.fixture(scope="module")
def hamlet():
    from lmforge.data.corpus import shakespeare

    return next(d for d in shakespeare("val") if d.name == "hamlet").text


@pytest.fixture(scope="module")
def tok(hamlet):
    from lmforge.tokenizer import train_tokenizer

    return train_tokenizer("bpe", [hamlet[:40000]], vocab_size=320)


@pytest.fixture(scope="module")
def gpt_dir(tok, tmp_path_factory):
    """A random 2-layer GPT (context 128) that, like a model lmforge pretrained, reads EOS before a text."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "gpt-tiny",
        vocab_size=tok.vocab_size,
        max_positions=128,
        pad_id=tok.pad_id,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        text_start_id=tok.eos_id,
    )
    return save_model(build_model(cfg).eval(), tmp_path_factory.mktemp("serve") / "gpt", tokenizer=tok)


class Running:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    @property
    def service(self):
        return self.app.app.state.service

    def client(self, key=KEY):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def health(self):
        return httpx.get(f"{self.url}/health", timeout=30).json()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def srv(gpt_dir):
    s = Running(create_app(gpt_dir, api_key=KEY, max_batch=4, max_tokens=100, model_name="tiny-gpt"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv):
    return srv.client()


def cli_json(capsys, *argv) -> list[dict]:
    from lmforge.cli.main import main

    capsys.readouterr()
    assert main(list(argv)) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


PROMPTS = ["HAMLET:\nTo be, or not to be", "Who's there?", "O, that this too too solid flesh would melt"]


# ---- the OpenAI API, end to end ---------------------------------------------------------------------


def test_models_and_health(srv, client):
    assert [m.id for m in client.models.list().data] == ["tiny-gpt"]
    h = srv.health()  # no key needed
    assert h["status"] == "ok" and h["slots"] == 4


def test_greedy_completion_equals_lmforge_generate(gpt_dir, client, capsys):
    for prompt in PROMPTS:
        ref = cli_json(
            capsys, "generate", str(gpt_dir), "--prompt", prompt, "--greedy", "--max-new-tokens", "24", "--json"
        )[0]
        r = client.completions.create(model="tiny-gpt", prompt=prompt, max_tokens=24, temperature=0)
        assert r.choices[0].text == ref["text"]
        assert r.usage.completion_tokens == ref["n_tokens"]
        assert r.choices[0].finish_reason == ("stop" if ref["finish_reason"] == "eos" else "length")


def test_echo_logprobs_equal_lmforge_score(gpt_dir, client, tok, capsys):
    for prompt in PROMPTS:
        ref = cli_json(capsys, "score", str(gpt_dir), "--text", prompt, "--per-token", "--no-progress")[0]
        for max_tokens in (0, 1):  # 1: what lm-evaluation-harness sends
            r = client.completions.create(
                model="tiny-gpt", prompt=prompt, max_tokens=max_tokens, temperature=0, echo=True, logprobs=1
            )
            lp = r.choices[0].logprobs
            n = len(ref["token_ids"])
            assert lp.tokens[:n] == [tok.decode([i]) for i in ref["token_ids"]]  # the start token stays hidden
            assert max(abs(a - b) for a, b in zip(lp.token_logprobs[:n], ref["token_logprobs"])) < 1e-5
            assert len(lp.tokens) == n + max_tokens
            assert r.choices[0].text.startswith(prompt)
            for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
                assert len(top) == 1 and max(top.values()) >= chosen - 1e-6
            assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_streaming_completion(srv, client):
    full = client.completions.create(model="tiny-gpt", prompt=PROMPTS[0], max_tokens=30, temperature=0, logprobs=0)
    chunks = list(
        client.completions.create(
            model="tiny-gpt",
            prompt=PROMPTS[0],
            max_tokens=30,
            temperature=0,
            logprobs=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    streamed_lp = [
        x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed_lp == full.choices[0].logprobs.token_logprobs
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # the raw stream: server-sent events in OpenAI's chunk shape, ending with [DONE]
    with httpx.stream(
        "POST",
        f"{srv.url}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
        json={"model": "tiny-gpt", "prompt": "Who", "max_tokens": 5, "stream": True},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "text_completion" and first["choices"][0]["index"] == 0


def test_prompt_list_n_and_seed(client, tok):
    r = client.completions.create(model="tiny-gpt", prompt=PROMPTS[:2], n=2, max_tokens=8, temperature=0.9, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    again = client.completions.create(model="tiny-gpt", prompt=PROMPTS[:2], n=2, max_tokens=8, temperature=0.9, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # a seed reproduces
    assert r.usage.prompt_tokens == sum(len(tok.encode(p)) + 1 for p in PROMPTS[:2])  # + the start token
    tokens = client.completions.create(model="tiny-gpt", prompt=[[5, 6, 7], [8, 9]], max_tokens=3, temperature=0)
    assert len(tokens.choices) == 2 and tokens.usage.prompt_tokens == 5


def test_seeded_sampling_equals_lmforge_generate(gpt_dir, client, capsys):
    ref = cli_json(
        capsys,
        "generate",
        str(gpt_dir),
        "--prompt",
        PROMPTS[1],
        "--max-new-tokens",
        "20",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "3",
        "--json",
    )[0]
    r = client.completions.create(
        model="tiny-gpt",
        prompt=PROMPTS[1],
        max_tokens=20,
        temperature=0.8,
        top_p=0.95,
        seed=3,
        extra_body={"top_k": 40},
    )
    assert r.choices[0].text == ref["text"]


def test_chat(srv, client, tok):
    from lmforge.infer.prompts import encode_prompt
    from lmforge.serve.chat import render_plain

    messages = [{"role": "system", "content": "You speak verse."}, {"role": "user", "content": "Who's there?"}]
    r = client.chat.completions.create(
        model="tiny-gpt", messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    prompt = render_plain(messages)
    assert prompt == "System: You speak verse.\nUser: Who's there?\nAssistant:"
    assert r.usage.prompt_tokens == len(encode_prompt(tok, prompt, srv.service.model))
    assert r.choices[0].message.role == "assistant"
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    parts = list(
        client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=12, temperature=0, stream=True)
    )
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == r.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == r.choices[0].finish_reason
    default = client.chat.completions.create(model="tiny-gpt", messages=messages, temperature=0)  # no max_tokens
    assert default.choices[0].message.content.startswith(r.choices[0].message.content)


def test_chat_template_of_the_model(tok):
    from lmforge.serve.chat import ChatFormatter, load_chat_template

    fmt = ChatFormatter(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}{{ eos_token }}",
        tok,
    )
    assert fmt.render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant></s>"
    assert fmt.stops == ()
    with pytest.raises(Exception, match="refused"):
        ChatFormatter("{{ raise_exception('roles must alternate') }}", tok).render([{"role": "user", "content": ""}])
    assert load_chat_template(None) is None


# ---- continuous batching ----------------------------------------------------------------------------


def _collector():
    out = {"text": {}, "tokens": {}, "finished": {}, "failed": None, "done": threading.Event(), "n_seen": 0}

    def sink(events):
        for e in events:
            if isinstance(e, Delta):
                out["text"][e.choice] = out["text"].get(e.choice, "") + e.text
                out["tokens"].setdefault(e.choice, []).extend((t.id, t.logprob) for t in e.tokens or [])
                out["n_seen"] += 1
            elif isinstance(e, Finished):
                out["finished"][e.choice] = e
                out["done"].set()
            elif isinstance(e, Failed):
                out["failed"] = e.message
                out["done"].set()

    return out, sink


@pytest.mark.parametrize("invariant", [True, False])
def test_greedy_request_is_exact_whatever_else_is_in_the_batch(gpt_dir, tok, invariant):
    """Alone, then joining mid-decode a batch of sampled and greedy requests at other positions:
    the same tokens and the same log-probabilities, bit for bit (batch_invariant=False: the same
    tokens, log-probabilities up to float rounding)."""
    from lmforge.infer import load_for_inference
    from lmforge.infer.prompts import encode_prompt

    model, _ = load_for_inference(gpt_dir, "cpu")
    engine = Engine(model, tok, max_batch=6, batch_invariant=invariant)
    engine.start()
    try:

        def submit(prompt, **params):
            out, sink = _collector()
            engine.submit(Job(encode_prompt(tok, prompt, model), _params(**params), sink))
            return out

        target = {"max_tokens": 20, "temperature": 0, "logprobs": 3}
        alone = submit(PROMPTS[2], **target)
        assert alone["done"].wait(60)
        others = [
            submit(PROMPTS[0], max_tokens=70, temperature=1.0, seed=1, logprobs=1),
            submit("Who", max_tokens=70, temperature=0.7, top_k=20, seed=2),
            submit(PROMPTS[1] * 3, max_tokens=60, temperature=0),
        ]
        deadline = time.monotonic() + 60
        while min(o["n_seen"] for o in others) < 5:  # all three are decoding
            assert time.monotonic() < deadline
            time.sleep(0.005)
        busy = submit(PROMPTS[2], **target)
        assert busy["done"].wait(60) and all(o["done"].wait(60) for o in others)
        assert all(o["finished"][0].reason == "length" for o in others)  # none had left when the target ended
        assert busy["text"][0] == alone["text"][0]
        if invariant:
            assert busy["tokens"][0] == alone["tokens"][0]
        else:
            assert [t for t, _ in busy["tokens"][0]] == [t for t, _ in alone["tokens"][0]]
            assert max(abs(a[1] - b[1]) for a, b in zip(busy["tokens"][0], alone["tokens"][0])) < 1e-5
        stats = engine.stats()
        assert stats["steps"] < stats["tokens"] - 5  # rows shared steps
    finally:
        engine.close()


def test_concurrent_http_requests_match_their_solo_runs(srv, client):
    prompts = [p + s for p in PROMPTS for s in ("", " and")]  # 6 requests on 4 slots: some wait, then join
    solo = [
        client.completions.create(model="tiny-gpt", prompt=p, max_tokens=25, temperature=0, logprobs=0) for p in prompts
    ]
    before = srv.health()
    results = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def one(i):
        c = srv.client()
        barrier.wait()
        results[i] = c.completions.create(model="tiny-gpt", prompt=prompts[i], max_tokens=25, temperature=0, logprobs=0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for a, b in zip(solo, results):
        assert b.choices[0].text == a.choices[0].text
        assert b.choices[0].logprobs.token_logprobs == a.choices[0].logprobs.token_logprobs
    after = srv.health()
    assert after["steps"] - before["steps"] < after["tokens"] - before["tokens"] - len(prompts)


def test_disconnect_frees_the_slot(gpt_dir):
    s = Running(create_app(gpt_dir, max_batch=1))
    try:
        with httpx.stream(
            "POST",
            f"{s.url}/v1/completions",
            timeout=60,
            json={"prompt": "Who", "max_tokens": 120, "stream": True, "temperature": 0},
        ) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")  # decoding has begun; now hang up
        deadline = time.monotonic() + 30
        while s.health()["running"]:
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.02)
        h = s.health()
        assert h["cancelled"] == 1 and h["completed"] == 0 and h["tokens"] < 120
        r = s.client().completions.create(model=str(gpt_dir), prompt="Who", max_tokens=3)  # the one slot is free
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        s.stop()


def test_a_failing_request_does_not_take_down_the_others(srv, client):
    engine = srv.service.engine
    take = engine._take_token

    def flaky(row, tok, lp):  # a bug that hits one request only (seed 666)
        if row.job.params.options.seed == 666 and row.n_tokens >= 2:
            raise RuntimeError("boom")
        return take(row, tok, lp)

    good = client.completions.create(model="tiny-gpt", prompt=PROMPTS[0], max_tokens=30, temperature=0)
    engine._take_token = flaky
    try:
        out = {}

        def bystander():
            out["r"] = srv.client().completions.create(
                model="tiny-gpt", prompt=PROMPTS[0], max_tokens=30, temperature=0
            )

        t = threading.Thread(target=bystander)
        t.start()
        with pytest.raises(openai.InternalServerError, match="boom"):
            client.completions.create(model="tiny-gpt", prompt="Who", max_tokens=30, temperature=0.5, seed=666)
        stream = client.completions.create(
            model="tiny-gpt", prompt="Who", max_tokens=30, temperature=0.5, seed=666, stream=True
        )
        with pytest.raises(openai.APIError, match="boom"):
            list(stream)
        t.join(60)
    finally:
        engine._take_token = take
    assert out["r"].choices[0].text == good.choices[0].text
    assert srv.health()["failed"] >= 2
    assert client.completions.create(model="tiny-gpt", prompt="Who", max_tokens=2).usage.completion_tokens >= 1


# ---- other families ---------------------------------------------------------------------------------


def test_encoder_decoder_answers_source_to_target(tok, tmp_path):
    from lmforge.infer import generate

    torch.manual_seed(1)
    cfg = ModelConfig.from_preset(
        "seq2seq-tiny",
        vocab_size=tok.vocab_size,
        pad_id=tok.pad_id,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        decoder_start_id=tok.bos_id,
    )
    model = build_model(cfg).eval()
    s = Running(create_app(model=model, tokenizer=tok, max_batch=2))
    try:
        c = s.client(key="unused")
        for src in PROMPTS[:2]:
            ref = generate(model, tok, src, max_new_tokens=15, temperature=0)[0]
            r = c.completions.create(model="lmforge", prompt=src, max_tokens=15, temperature=0)
            assert r.choices[0].text == ref.text
        with pytest.raises(openai.BadRequestError, match="echo"):
            c.completions.create(model="lmforge", prompt="x", max_tokens=1, echo=True, logprobs=1)
    finally:
        s.stop()


def test_encoder_points_to_fill_mask(tmp_path):
    from lmforge.tokenizer import train_tokenizer

    wp = train_tokenizer("wordpiece", ["paris is the capital of france"] * 5, vocab_size=60)
    cfg = ModelConfig.from_preset(
        "bert-tiny", vocab_size=wp.vocab_size, pad_id=wp.pad_id, mask_id=wp.mask_id, cls_id=wp.cls_id, sep_id=wp.sep_id
    )
    s = Running(create_app(model=build_model(cfg).eval(), tokenizer=wp))
    try:
        c = s.client()
        for call in (
            lambda: c.completions.create(model="lmforge", prompt="paris is"),
            lambda: c.chat.completions.create(model="lmforge", messages=[{"role": "user", "content": "x"}]),
        ):
            with pytest.raises(openai.BadRequestError, match="fill-mask"):
                call()
        assert s.health()["status"] == "ok"
    finally:
        s.stop()


# ---- bad requests -----------------------------------------------------------------------------------

BAD = [  # (route, body, status, the field named)
    ("completions", b"{not json", 400, "body"),
    ("completions", [1, 2], 400, "body"),
    ("completions", {"max_tokens": 5}, 400, "prompt"),
    ("completions", {"prompt": 42}, 400, "prompt"),
    ("completions", {"prompt": [[1, 2], "x", 3.5]}, 400, "prompt"),
    ("completions", {"prompt": [1, 99999]}, 400, "prompt"),
    ("completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": 101}, 400, "max_tokens"),  # the server's cap
    ("completions", {"prompt": "x", "temperature": 5}, 400, "temperature"),
    ("completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "x", "n": 50}, 400, "n"),
    ("completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("completions", {"prompt": "x", "stop": 7}, 400, "stop"),
    ("completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("completions", {"prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ("completions", {"prompt": "x", "seed": 1.5}, 400, "seed"),
    ("completions", {"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
        400,
        "tools",
    ),
]


@pytest.mark.parametrize("route,body,status,param", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_request(srv, route, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{srv.url}/v1/{route}",
        content=raw,
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]
    assert srv.health()["status"] == "ok"


def test_prompt_beyond_the_context_names_both_numbers(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-gpt", prompt="To be, or not to be " * 12, max_tokens=90)
    msg = e.value.body["message"]
    assert e.value.body["param"] == "prompt" and "max_tokens 90" in msg and "context of 128" in msg


def test_limits_of_size_route_and_method(srv):
    h = {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(
        f"{srv.url}/v1/completions", content=b'{"prompt": "' + b"x" * (2 << 20) + b'"}', headers=h, timeout=30
    )
    assert big.status_code == 413 and big.json()["error"]["param"] == "body"
    assert httpx.get(f"{srv.url}/v1/nowhere", headers=h, timeout=30).status_code == 404
    wrong = httpx.get(f"{srv.url}/v1/completions", headers=h, timeout=30)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_api_key(srv):
    for key in ("wrong", None):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        for method, route in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/tokenize")):
            r = httpx.request(method, f"{srv.url}{route}", headers=headers, json={"prompt": "x"}, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        srv.client(key="wrong").models.list()
    assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200


def test_unknown_fields_are_ignored(client):
    r = client.completions.create(
        model="tiny-gpt", prompt="Who", max_tokens=2, extra_body={"frobnicate": True, "user_tier": {"x": 1}}
    )
    assert r.usage.completion_tokens >= 1


# ---- the CLI process: SIGTERM, and the missing extra ---------------------------------------------------


def test_cli_serve_finishes_in_flight_on_sigterm(gpt_dir):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmforge",
            "serve",
            str(gpt_dir),
            "--port",
            "0",
            "--max-batch",
            "2",
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].strip()
        with httpx.stream(
            "POST",
            f"{url}/v1/completions",
            timeout=60,
            json={"prompt": "Who", "max_tokens": 110, "temperature": 0, "stream": True},
        ) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)  # mid-stream
            rest = [x for x in lines if x]
        assert rest[-1] == "data: [DONE]"
        reasons = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in rest[:-1]]
        assert reasons[-1] in ("length", "stop")  # the request in flight finished
        assert proc.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_extra_is_one_line(gpt_dir, monkeypatch, capsys):
    from lmforge.cli.main import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert main(["serve", str(gpt_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[serve]"' in err


# ---- lm-evaluation-harness ------------------------------------------------------------------------------


def test_lm_eval_local_completions_matches_lmforge_scoring(srv, gpt_dir, hamlet, tok, tmp_path, monkeypatch):
    """lm-eval's local-completions model, with the server's own tokenizer routes (no hub), runs an
    offline loglikelihood task built from the bundled corpus; each example's log-likelihood equals
    lmforge's scoring of the continuation given the context."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lmforge.infer import load_for_inference, score

    lines = [x for x in hamlet.splitlines() if len(x.split()) >= 6][:10]
    docs = [{"context": " ".join(x.split(" ")[:3]), "continuation": " " + " ".join(x.split(" ")[3:])} for x in lines]
    data = tmp_path / "hamlet.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (tmp_path / "task.yaml").write_text(
        "task: lmforge_hamlet_lines\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\noutput_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{continuation}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": "tiny-gpt",
            "base_url": f"{srv.url}/v1/completions",
            "tokenizer_backend": "remote",
            "tokenized_requests": False,
            "num_concurrent": 4,
            "max_retries": 1,
            "auth_token": KEY,
            "max_length": 128,
        },
        tasks=["lmforge_hamlet_lines"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    samples = out["samples"]["lmforge_hamlet_lines"]
    assert len(samples) == len(docs)
    model, _ = load_for_inference(gpt_dir, "cpu")
    for s in samples:
        d = s["doc"]
        n_ctx = len(tok.encode(d["context"]))
        ref = score(model, tok, d["context"] + d["continuation"], progress=False)[0]
        expected = sum(ref.token_logprobs[n_ctx:])
        assert abs(float(s["resps"][0][0][0]) - expected) < 1e-4
