"""What a chat request may ask, checked before its template runs: OpenAI's message shapes, and the
features this server cannot honour (tool calls, constrained output), refused rather than ignored.

A template fed a message without content or with an unknown role fails with its own words (or,
worse, renders something); OpenAI answers such requests with a 400 naming the message."""

from __future__ import annotations

from typing import Any

from gateway.openai.serving import ApiError

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def check_messages(messages: list[dict[str, Any]]) -> None:
    if not messages:
        raise ApiError(400, "messages must hold at least one message", param="messages")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}",
                           param="messages")
        content = message.get("content")
        if content is None:
            if role == "assistant":
                if _acts_without_content(message):
                    continue
                raise ApiError(400, f"messages[{i}].content is required for an assistant message without "
                                    "tool_calls or a refusal", param="messages")
            raise ApiError(400, f"messages[{i}].content is required for a {role} message", param="messages")
        if isinstance(content, list):
            _check_parts(i, content)
        elif not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of content parts",
                           param="messages")


def _acts_without_content(message: dict[str, Any]) -> bool:
    """An assistant turn may be only its tool calls, or a refusal (rendered as its text)."""
    return bool(message.get("tool_calls") or message.get("function_call")) or isinstance(message.get("refusal"), str)


def _check_parts(i: int, parts: list[Any]) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ApiError(400, f"messages[{i}].content[{j}] must be an object with a type", param="messages")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{i}].content[{j}].text must be a string", param="messages")
        if part["type"] == "refusal" and not isinstance(part.get("refusal"), str):
            raise ApiError(400, f"messages[{i}].content[{j}].refusal must be a string", param="messages")


# What the server itself gives every template: a request may not replace these (tools: tool calling
# is refused above, not smuggled in here).
RESERVED_TEMPLATE_VARIABLES = frozenset(("messages", "add_generation_prompt", "bos_token", "eos_token",
                                         "raise_exception", "tools"))


def check_template_kwargs(kwargs: dict[str, Any] | None) -> None:
    for name in kwargs or {}:
        if not name.isidentifier():
            raise ApiError(400, f"chat_template_kwargs: {name!r} is not a template variable name",
                           param="chat_template_kwargs")
        if name in RESERVED_TEMPLATE_VARIABLES:
            raise ApiError(400, f"chat_template_kwargs: {name!r} is set by the server", param="chat_template_kwargs")


def check_unsupported(tools: list[Any] | None, tool_choice: Any, response_format: dict[str, Any] | None) -> None:
    """Tool calls and constrained output: this server parses no tool calls and constrains no
    decoding, so a request that needs either is refused rather than answered in free text."""
    if tools and tool_choice != "none":
        raise ApiError(400, "tool calling is not supported by this server: send no tools, or tool_choice \"none\"",
                       param="tools")
    kind = (response_format or {}).get("type", "text")
    if kind != "text":
        raise ApiError(400, f"response_format {kind!r} is not supported by this server (no constrained decoding); "
                            "only \"text\"", param="response_format")
