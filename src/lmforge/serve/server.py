"""The FastAPI application and the uvicorn process around it.

:func:`create_app` builds the app for a model directory (or a loaded model and tokenizer);
:func:`serve` runs it with uvicorn until SIGINT / SIGTERM: uvicorn then stops accepting
connections and lets the requests in flight finish (up to ``shutdown_timeout`` seconds), after
which the engine cancels what is left and the process exits.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations at run time
import contextlib
import hmac
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from lmforge.errors import LMForgeError
from lmforge.serve.app import ServeConfig, Service, _dumps, require_extra
from lmforge.serve.chat import load_chat_template
from lmforge.serve.protocol import APIError

log = logging.getLogger("lmforge.serve")


class _Guard:
    """ASGI wrapper: the API key on every route but /health, and the body size limit."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope.get("path") != "/health":
            given = headers.get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.key):
                what = "no API key: send the header Authorization: Bearer KEY" if given is None else "wrong API key"
                return await _send_error(send, APIError(401, what, code="invalid_api_key"))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_error(send, _too_large(self.max_body))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked body that grows past the limit
                    raise _too_large(self.max_body)
            return message

        return await self.app(scope, counted, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"body: larger than this server's limit of {limit} bytes", "body")


async def _send_error(send, e: APIError) -> None:
    body = _dumps(e.body())
    await send(
        {
            "type": "http.response.start",
            "status": e.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    model_dir: str | Path | None = None,
    *,
    model=None,
    tokenizer=None,
    config: ServeConfig | None = None,
    chat_template: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    **settings,
):
    """The ASGI app serving ``model_dir`` (or ``model`` + ``tokenizer``). Settings are
    :class:`ServeConfig` fields, given as ``config`` or as keywords (``api_key=``, ``max_batch=``,
    ...). ``chat_template``: Jinja source overriding the model directory's own."""
    require_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    config = config or ServeConfig(**settings)
    if model is None:
        if model_dir is None:
            raise LMForgeError("create_app: give a model directory, or model= and tokenizer=")
        from lmforge.infer import load_for_inference

        model, tokenizer = load_for_inference(model_dir, device, dtype)
    elif tokenizer is None:
        raise LMForgeError("create_app: model= needs tokenizer= too")
    if config.model_name is None and model_dir is not None:
        config.model_name = str(model_dir)
    if chat_template is None:
        chat_template = load_chat_template(model_dir)
    service = Service(model, tokenizer, config, chat_template)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if service.engine is not None:
            service.engine.start()
        yield
        if service.engine is not None:
            service.engine.close()

    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service

    def answer(o):
        return o if isinstance(o, Response) else Response(_dumps(o), media_type="application/json")

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return Response(_dumps(e.body()), status_code=e.status, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        err = APIError(e.status_code, what.get(e.status_code, str(e.detail)))
        return JSONResponse(err.body(), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request, e: Exception):  # one request's bug is its own 500, never the server's end
        log.exception("request failed")
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")
        return Response(_dumps(err.body()), status_code=500, media_type="application/json")

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"body: not valid JSON ({e})", "body") from None
        if not isinstance(obj, dict):
            raise APIError(400, "body: expected a JSON object", "body")
        return obj

    @app.get("/health")
    async def health():
        stats = service.engine.stats() if service.engine is not None else {}
        return answer({"status": "ok", "model": service.name, **stats})

    @app.get("/v1/models")
    async def models():
        return answer(service.models())

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str):
        service.check_model({"model": name})
        return answer(service.models()["data"][0])

    @app.post("/v1/completions")
    async def completions(request: Request):
        return answer(await service.completions(request, await body_of(request)))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return answer(await service.chat_completions(request, await body_of(request)))

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return answer(service.tokenizer_info())

    @app.post("/tokenize")
    async def tokenize(request: Request):
        return answer(service.tokenize(await body_of(request)))

    @app.post("/detokenize")
    async def detokenize(request: Request):
        return answer(service.detokenize(await body_of(request)))

    return _Guard(app, config.api_key, config.max_body_bytes)


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket (port 0: a free one); refuses clearly when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LMForgeError(f"port: cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    model_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    shutdown_timeout: float = 30.0,
    log_level: str = "info",
    app=None,
    **kwargs,
) -> None:
    """Serve ``model_dir`` on ``host:port`` until SIGINT / SIGTERM (see :func:`create_app` for the
    settings). Prints the address once it listens."""
    require_extra()
    import uvicorn

    app = app or create_app(model_dir, **kwargs)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"lmforge serve: listening on http://{shown}:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout, lifespan="on")
    # uvicorn stops gracefully on SIGTERM, then raises the signal again under the handler it found:
    # a no-op one makes that graceful stop end the process with status 0, not "killed by SIGTERM"
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
