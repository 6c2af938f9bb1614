"""The few request and response fields the gateway reads; everything else passes through as bytes."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.openai.protocol import ModelName


class ContentPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class MessageFields(msgspec.Struct):
    role: str | None = None
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class RoutingFields(msgspec.Struct):
    """Read from a chat, completions or embeddings body: the model, streaming, sizes, and the prompt
    text (for the token estimate and the prefix key)."""

    model: ModelName
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    messages: list[MessageFields] | None = None
    prompt: Any = None  # a string, strings, token ids or lists of token ids
    input: Any = None  # embeddings': the same shapes as a prompt (gateway.fleet.embeddings)


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else 0

    @property
    def reasoning_tokens(self) -> int:
        return self.completion_tokens_details.reasoning_tokens if self.completion_tokens_details else 0


class UsageFields(msgspec.Struct):
    """The usage of a completion body or of a stream's usage chunk (whose choices are empty)."""

    usage: Usage | None = None
    choices: list[msgspec.Raw] = []

