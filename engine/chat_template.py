"""Rendering a model's own Jinja chat template into a prompt string, the way transformers does."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import InvalidRequestError


class ChatTemplateError(InvalidRequestError):
    """The model has no chat template, the template is broken, or it rejected the messages."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages")


class TemplateRefusal(jinja2.TemplateError):
    """Raised by a template's raise_exception(message), e.g. "Conversation roles must alternate"."""


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, object]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str | None] | None = None,
    **kwargs: object,
) -> str:
    """Render `messages` (OpenAI-style dicts) with the template `source`.

    `special_tokens` provides bos_token/eos_token/...; `kwargs` are extra template variables
    (tools, documents, enable_thinking...). Messages are copied, never modified in place.
    """
    template = _compile(source)
    variables: dict[str, object] = {"tools": None, "documents": None, **(special_tokens or {}), **kwargs}
    normalized = [_normalize_message(message) for message in messages]
    try:
        return template.render(
            messages=normalized,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except TemplateRefusal as exc:  # the template's own raise_exception: words written for the caller
        raise ChatTemplateError(f"this model's chat template refuses these messages: {exc}") from exc
    except Exception as exc:
        # Jinja's and Python's errors ("'dict object' has no attribute 'x'") describe the template's
        # internals, which the client neither sees nor can change.
        raise ChatTemplateError("this model's chat template cannot render these messages: a message lacks a "
                                "field the template needs, or holds a value it cannot use") from exc


def _normalize_message(message: Mapping[str, object]) -> dict[str, object]:
    # Null fields are dropped (templates test for a missing key, `is defined`, not for none), but
    # for content: OpenAI's tool-call and refusal turns have `"content": null`, and templates read
    # message['content'] regardless. vLLM renders it as empty text; a refusal turn renders as what
    # the assistant said, its refusal.
    normalized = {key: value for key, value in message.items() if value is not None}
    content = message.get("content")
    refusal = message.get("refusal")
    if isinstance(content, list):
        normalized["content"] = _flatten_content(content)
    elif content is None:
        normalized["content"] = refusal if isinstance(refusal, str) else ""
    return normalized


def _flatten_content(parts: list[object]) -> str:
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif isinstance(part, Mapping) and part.get("type") == "refusal":  # an assistant turn's, read as text by vLLM
            texts.append(str(part.get("refusal", "")))
        else:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise ChatTemplateError(f"content part of type {kind!r} is not supported: the model reads text only")
    # Same joiner as vLLM's "string" content format, so multi-part prompts match across servers.
    return "\n".join(texts)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def _raise_exception(message: str) -> None:
    raise TemplateRefusal(message)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes "<", ">" and "&", which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names as transformers does, to keep templates out of internals."""

    def __init__(*args: object, **kwargs: object) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)  # type: ignore[call-overload]
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)  # type: ignore[arg-type]

    def __setitem__(self, name: str, value: object) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attribute {name!r}")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by training templates) and renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: jinja2.runtime.Macro) -> str:
        return caller()
