"""One client request on its way through the gateway, and the stages that act on it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import msgspec

from gateway.fleet.embeddings import EMBEDDINGS_PATH
from gateway.fleet.wire import RoutingFields, Usage
from gateway.http import Request


CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class Exchange:
    request: Request
    request_id: str
    path: str  # "/v1/chat/completions", "/v1/completions" or "/v1/embeddings"
    fields: RoutingFields
    body: bytes  # what goes to the engine
    prompt_text: str  # the prompt's text, for the token estimate and the prefix key
    estimated_prompt_tokens: int
    estimated_tokens: int  # prompt estimate + the most output tokens it may produce (embeddings: none)
    num_prompts: int  # a completions or embeddings request may carry several
    include_usage: bool  # the client asked for a usage chunk
    affinity_key: bytes | None = None
    # A notice for the client (a deprecated model's), added to the answer's JSON as `warning`.
    warning: str | None = None
    # Body fields the stages set for the engine (priority, a tier's max_tokens): they override the client's.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Headers every response carries (rate-limit counters, deprecation notices...).
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    # Set as the exchange ends: status sent to the client (499: the client left), exact usage.
    status: int = 0
    error_code: str | None = None  # the OpenAI error code of a refusal or failure
    usage: Usage | None = None
    host: str | None = None
    attempts: int = 0  # hosts tried
    streamed_tokens: int = 0  # content events relayed (a token each from our engines)
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    last_content: float | None = None  # when the latest content event was relayed
    content_gaps: list[float] = field(default_factory=list)  # seconds between successive content events
    # Each stage keeps what it needs between admit and finish here, under its own name.
    state: dict[str, Any] = field(default_factory=dict)
    _payload: Any = None

    @property
    def model(self) -> str:
        return self.fields.model

    @property
    def stream(self) -> bool:
        return bool(self.fields.stream)

    @property
    def embeddings(self) -> bool:
        """Whether it asks for vectors: no output tokens to reserve or cap."""
        return self.path == EMBEDDINGS_PATH

    @property
    def prompt_field(self) -> str:
        """The body's field the model reads: security scans it and retention keeps it, whatever else
        the body carries (a completion's `messages` is not what its engine reads)."""
        if self.embeddings:
            return "input"
        return "messages" if self.path == CHAT_PATH else "prompt"

    def note_content(self, now: float) -> None:
        """A content event relayed at `now` (time.monotonic())."""
        self.streamed_tokens += 1
        if self.last_content is not None:
            self.content_gaps.append(now - self.last_content)
        self.last_content = now

    def payload(self) -> Any:
        """The whole body as JSON values, decoded on first use (security reads the messages)."""
        if self._payload is None:
            self._payload = msgspec.json.decode(self.request.body)
        return self._payload


@dataclass(slots=True)
class FinishedBatch:
    """Requests the gateway's native lane answered alike (one model, host and status) since its last
    report (gateway/native_lane.py): their number, their sums, and each one's latencies."""

    model: str
    host: str
    status: int
    count: int
    retries: int  # hosts tried beyond the first, all requests together
    with_usage: int  # requests whose answer carried the engine's usage
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    ttft_s: Sequence[float]  # arrival to the engine's answer, one per request
    e2e_s: Sequence[float]  # arrival to the answer sent, one per request
    # Under the tenant stages: whose requests they were, and what they cost together.
    tenant: str = ""
    tier: str = ""
    cost_eur: float = 0.0


class Stage(Protocol):
    """A step of the request path (auth, limits, security, catalog...). `admit` runs in order
    before routing and refuses by raising GatewayError; `finish` runs once for every stage whose
    admit returned, when the exchange ends (status and usage set), whatever the outcome. What
    `finish` returns, if anything, is awaited before the answer's last byte when the answer ends
    well (a ledger row made durable before the client sees the end). A stage may also have
    `refuse_unread(request, error) -> GatewayError`: told of a request whose body could not be read
    (no admit, no finish), it returns the answer to send instead (the tenancy stage: 401 for a bad key,
    else the error with the caller's headers, audited)."""

    async def admit(self, exchange: Exchange) -> None: ...

    def finish(self, exchange: Exchange) -> Awaitable[None] | None: ...


class BatchStage(Stage, Protocol):
    """A stage that only counts (metrics, the console's recorder): it can also take the native
    lane's requests as batches, which never pass through `admit`."""

    def finish_batch(self, batch: FinishedBatch) -> None: ...
