"""msgspec Structs for OpenAI's chat completions, completions, embeddings, models and error bodies.

Unknown request fields are ignored (msgspec's default), so newer clients keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

# OpenAI's max_tokens for a completions request that gives none (chat's runs to the context's end).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def default_max_tokens(path: str) -> int | None:
    """What a request to `path` without max_tokens generates at most: None (up to the context's end)
    for chat; the gateway's estimates and reservations read it."""
    return COMPLETIONS_DEFAULT_MAX_TOKENS if path == "/v1/completions" else None
# A model's name, as a request may give it: longer ones are refused before anything echoes or keeps
# them (a 404's message, the console's per-model series).
ModelName = Annotated[str, msgspec.Meta(max_length=256)]

# Sent by a gateway with each request whose whole answer it awaits: a random name under which it
# can stop that request (POST /internal/abort/{tag}) when its own client leaves.
ABORT_TAG_HEADER = "x-llmaas-abort-tag"

# -- requests --------------------------------------------------------------------------------


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class SamplingFields(msgspec.Struct, kw_only=True):
    """Fields both endpoints share; None means "the OpenAI default". Every field OpenAI declares
    nullable accepts null as "not given" (its client sends None as null)."""

    model: ModelName
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n_given: int | None = msgspec.field(default=1, name="n")  # read as `n`, where null is 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, OpenAI's form) -> bias
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM-style extensions.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    # Scheduling priority, lower first (vLLM's convention); the gateway sets it from the caller's tier.
    priority: int = 0
    # A ceiling on each choice's completion tokens, below the context's room (the gateway sets it
    # from the caller's tier when the client gave no max_tokens): the answer stops there with
    # finish_reason "length" instead of being refused.
    max_tokens_cap: int | None = None

    # The gateway's fields above, which clients do not set: the OpenAPI document leaves them out.
    INTERNAL: ClassVar[tuple[str, ...]] = ("priority", "max_tokens_cap")

    @property
    def n(self) -> int:
        return 1 if self.n_given is None else self.n_given


class ChatCompletionRequest(SamplingFields, kw_only=True):
    # Plain dicts: the chat template consumes OpenAI's message shape as is.
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    # Read only to refuse what this server cannot honour (gateway/openai/messages.py).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # Extra variables for the model's chat template, as vLLM takes them ({"enable_thinking": false}).
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    # A string, a list of strings, one list of token ids, or a list of such lists.
    prompt: str | list[str | int | list[int]]
    logprobs: int | None = None
    echo: bool | None = False  # each choice's text starts with its prompt
    # Read only to refuse what this server cannot honour: insertion, and best-of-n reranking.
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: ModelName
    # A string, a list of strings, one list of token ids, or a list of such lists (checked by the
    # handler: a union holds one list type only).
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] | None = None  # None: "float"
    dimensions: int | None = None  # shorter than the model's own for a Matryoshka-trained model
    user: str | None = None
    # Scheduling priority, lower first; the gateway sets it from the caller's tier.
    priority: int = 0

    INTERNAL: ClassVar[tuple[str, ...]] = ("priority",)


# -- responses -------------------------------------------------------------------------------


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class UsageInfo(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails
    # Our extension: the engine's energy for the answer (its share of each step, by tokens). Only
    # where a meter measured it; absent otherwise.
    energy_joules: float | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[ChatTokenLogprob]


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    # None when a reasoning model spent all its tokens thinking.
    content: str | None
    # The text between the model's thinking markers (an extension, as in vLLM and DeepSeek's API).
    reasoning_content: str | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str
    object: Literal["chat.completion"] = "chat.completion"


class ChatDelta(msgspec.Struct, omit_defaults=True):
    # Omitted when unset: the first delta carries only the role, later ones only content.
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str
    usage: UsageInfo | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


class CompletionLogprobs(msgspec.Struct):
    """The legacy completions shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(msgspec.Struct):
    """Both the whole response and, with object "text_completion" too, each streamed chunk."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str
    usage: UsageInfo | None = None
    object: Literal["text_completion"] = "text_completion"


class Embedding(msgspec.Struct):
    index: int
    embedding: list[float] | str  # a str: base64 of the little-endian float32 values
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    total_tokens: int
    energy_joules: float | None = None  # as in UsageInfo: only where a meter measured it


class EmbeddingList(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "llmaas"
    object: Literal["model"] = "model"
    # A gateway with a model catalog (gateway/tenancy/catalog.py) adds each model's lifecycle; the
    # fields are absent elsewhere. Dates are ISO dates (2025-12-31).
    publisher: str | UnsetType = UNSET
    phase: Literal["experimental", "production", "deprecated", "retired"] | UnsetType = UNSET
    go_live: str | UnsetType = UNSET
    end_of_support: str | None | UnsetType = UNSET  # None: no end announced
    replacement: str | None | UnsetType = UNSET  # the model to move to, if the catalog names one
    served: bool | UnsetType = UNSET  # whether a host serves it here (a catalogued model may not be)


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: Literal["list"] = "list"


class Health(msgspec.Struct):
    status: Literal["ok", "degraded"]
    # A gateway's: the models without a healthy host (it answers 503 while any is listed).
    models_down: list[str] | UnsetType = UNSET
    # A gateway's: why its ledger and audit records no longer reach its database (503 while set).
    store: str | UnsetType = UNSET


class ErrorInfo(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorInfo
