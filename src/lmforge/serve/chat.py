"""Chat messages -> one prompt: the model's chat template when it has one, else a plain one.

A model directory may carry a Jinja chat template as HF does (``chat_template.jinja``, or the
``chat_template`` field of ``tokenizer_config.json``); it is rendered in a sandbox with
``messages``, ``add_generation_prompt=True``, ``bos_token`` and ``eos_token``.

A base model (lmforge's own pretraining writes none) gets the **plain template**: each message on
its own line as ``Role: content`` (``System``, ``User``, ``Assistant``, ...), then ``Assistant:``
for the model to continue. The reply ends where the model starts the next turn: the plain template
adds the stop strings ``"\\nUser:"`` and ``"\\nSystem:"`` to the request's own.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import LMForgeError
from lmforge.tokenizer import special_id

PLAIN_STOPS = ("\nUser:", "\nSystem:")


def load_chat_template(model_dir: str | Path | None) -> str | None:
    """The Jinja chat template kept in a model directory, or None."""
    if model_dir is None:
        return None
    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = d / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if isinstance(t, list):  # named templates: the default one
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) else None


def render_plain(messages: list[dict]) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines + ["Assistant:"])


class ChatFormatter:
    """Renders messages with ``template`` (Jinja source) or, when None, the plain template."""

    def __init__(self, template: str | None, tokenizer=None):
        self.template_source = template
        self._template = None
        self._specials = {}
        if template is not None:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            try:
                self._template = env.from_string(template)
            except TemplateError as e:
                raise LMForgeError(f"chat template: does not compile ({e})") from None
            ids = {name: special_id(tokenizer, name) for name in ("bos", "eos")}
            self._specials = {f"{k}_token": tokenizer.id_to_token(i) for k, i in ids.items() if i is not None}

    @property
    def stops(self) -> tuple[str, ...]:
        """Stop strings the template implies (the plain template's next-turn markers)."""
        return PLAIN_STOPS if self._template is None else ()

    def render(self, messages: list[dict]) -> str:
        if self._template is None:
            return render_plain(messages)
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self._specials)
        except TemplateError as e:
            raise LMForgeError(f"messages: the model's chat template refused them ({e})") from None
