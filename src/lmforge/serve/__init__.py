"""An OpenAI-compatible HTTP server with continuous batching (the ``[serve]`` extra).

::

    from lmforge.serve import create_app, serve
    serve("runs/shakespeare-gpt/best", port=8000, max_batch=8)   # blocks; SIGTERM stops it
    app = create_app("runs/shakespeare-gpt/best", api_key="k")   # an ASGI app for your own server

The batching :class:`Engine` needs only torch and can be driven from Python without HTTP.
See docs/serving.md.
"""

from lmforge.serve.app import ServeConfig, require_extra
from lmforge.serve.engine import Engine, EngineBusy, Job, SamplingParams
from lmforge.serve.server import create_app, serve

__all__ = ["Engine", "EngineBusy", "Job", "SamplingParams", "ServeConfig", "create_app", "require_extra", "serve"]
