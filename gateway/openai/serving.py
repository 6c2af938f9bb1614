"""What every OpenAI handler shares: the served engine, request decoding, error bodies, SSE framing."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import msgspec

from engine.async_engine import AsyncLLMEngine
from engine.errors import InvalidRequestError
from engine.outputs import RequestOutput, Usage
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from gateway.http import Request, Response
from gateway.http.json_errors import invalid_json_message, validation_param
from gateway.metrics import ServingMetrics
from gateway.openai.protocol import (
    ABORT_TAG_HEADER,
    CompletionTokensDetails,
    ErrorBody,
    ErrorInfo,
    PromptTokensDetails,
    SamplingFields,
    UsageInfo,
)
from gateway.openai.reasoning import ReasoningMarkers

SYSTEM_FINGERPRINT = "llmaas-0.1.0"

# Built once: msgspec encoders and decoders are cheap to call, costly to create.
ENCODER = msgspec.json.Encoder()
_DONE = b"data: [DONE]\n\n"
T = TypeVar("T")
# An abort can reach the engine before the answer it names is registered (the client left while its
# request was still on its way, or being tokenized): such tags are kept this long, this many at most,
# and the answer stops as soon as it starts.
EARLY_ABORT_S = 60.0
EARLY_ABORTS_MAX = 4096


@dataclass(slots=True)
class ServingContext:
    """One engine served under one or more model names (the first is the canonical one).

    chat_template replaces the model's own; reasoning_markers: "auto" splits `<think>` blocks when
    the model knows those markers (see ReasoningMarkers.detect), None never splits.
    """

    engine: AsyncLLMEngine
    model_names: list[str]
    created: int = field(default_factory=lambda: int(time.time()))
    chat_template: str | None = None
    reasoning_markers: ReasoningMarkers | Literal["auto"] | None = "auto"
    metrics: ServingMetrics | None = None
    # Engine request ids of whole answers being made, by their caller's abort tag.
    tagged: dict[str, list[str]] = field(default_factory=dict)
    # Tags aborted before their answer was registered: tag -> when (time.monotonic()).
    early_aborts: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.reasoning_markers == "auto":
            self.reasoning_markers = ReasoningMarkers.detect(self.engine.tokenizer, self.chat_template)
        if self.metrics is None:
            self.metrics = ServingMetrics(self.engine)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def markers(self) -> ReasoningMarkers | None:
        return self.reasoning_markers if isinstance(self.reasoning_markers, ReasoningMarkers) else None

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       priority: int = 0) -> Started:
        """Starts a request (see `start`), timed for /metrics."""
        arrival = time.perf_counter()
        outputs = self.engine.generate(prompt, params, request_id=request_id, priority=priority)
        # Timed inside start: a generator wrapped around the started request would, if closed before
        # it was read, never run its cleanup, and the engine request would go on.
        return await start(outputs if self.metrics is None else self.metrics.track(outputs, arrival))

    async def whole(self, request: Request, request_ids: list[str], answer: Awaitable[T]) -> T:
        """Awaits a whole answer made of `request_ids`, which the caller's abort tag (if it sent
        one) names meanwhile: a gateway whose client left then stops them, and gets the answer at
        once, with the usage of what they had generated."""
        tag = request.headers.get(ABORT_TAG_HEADER)
        if tag:
            # Added to, not replaced: answers sharing a tag (a client reusing one) are all named by it.
            self.tagged.setdefault(tag, []).extend(request_ids)
            if self.early_aborts.pop(tag, None) is not None:
                self.abort_tagged(tag)
        try:
            return await answer
        finally:
            if tag:
                self._untag(tag, request_ids)

    def _untag(self, tag: str, request_ids: list[str]) -> None:
        """Drops this answer's requests from its tag; the tag's other answers stay named by it."""
        left = [r for r in self.tagged.get(tag, []) if r not in request_ids]
        if left:
            self.tagged[tag] = left
        else:
            self.tagged.pop(tag, None)

    def abort_tagged(self, tag: str) -> int:
        """Aborts the answer `tag` names; returns how many engine requests that stopped (0 when the
        answer is not registered yet: it is then stopped as it starts, within EARLY_ABORT_S)."""
        request_ids = self.tagged.get(tag)
        if request_ids is None:
            self._remember_early_abort(tag)
            return 0
        for request_id in request_ids:
            self.engine.abort(request_id)
        return len(request_ids)

    def _remember_early_abort(self, tag: str) -> None:
        now = time.monotonic()
        early = self.early_aborts
        early[tag] = now
        early.move_to_end(tag)
        while early and (len(early) > EARLY_ABORTS_MAX or next(iter(early.values())) < now - EARLY_ABORT_S):
            early.popitem(last=False)

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    def check_model(self, model: str) -> None:
        if model not in self.model_names:
            raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")

    @property
    def embeds(self) -> bool:
        """Whether the engine serves embeddings (and only them); an engine has one task."""
        return self.engine.engine.pooling is not None

    def check_generates(self, model: str) -> None:
        """Chat and completions: refused by an embedding engine."""
        if self.embeds:
            raise ApiError(400, f"The model `{model}` serves embeddings only: use /v1/embeddings.", param="model")


class ApiError(Exception):
    """A request we refuse; handlers turn it into an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> Response:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return Response(status=self.status, body=ENCODER.encode(ErrorBody(info)))

    @classmethod
    def from_invalid(cls, exc: InvalidRequestError) -> ApiError:
        return cls(400, str(exc), param=exc.param)


def decode_body(request: Request, decoder: msgspec.json.Decoder[T]) -> T:
    try:
        return decoder.decode(request.body)
    except msgspec.ValidationError as exc:
        raise ApiError(400, str(exc), param=validation_param(str(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # a string that is not UTF-8 is the latter
        raise ApiError(400, f"Invalid JSON body: {invalid_json_message(request.body, exc)}") from None


def sampling_params(req: SamplingFields, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """Maps the wire fields to SamplingParams, whose validation errors name the field."""
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
    return SamplingParams(
        n=req.n,
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        seed=req.seed,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        logit_bias=_logit_bias(req.logit_bias),
    )


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    try:
        return {int(token): value for token, value in (bias or {}).items()}
    except ValueError:
        raise ApiError(400, "logit_bias keys must be token ids", param="logit_bias") from None


def capped_max_tokens(max_tokens: int | None, cap: int | None, room: int, n: int = 1) -> int | None:
    """max_tokens lowered to `cap`; None (up to the context's end, `room` tokens) stays None when
    the cap leaves all the room."""
    if cap is None:
        return max_tokens
    if cap < 1:  # the tier's tokens a request, shared by n choices, leave each none
        raise ApiError(400, f"the prompt leaves no completion tokens for each of the {n} choice(s) under this "
                            "request's token limit (max_tokens_cap)", param="n" if n > 1 else "max_tokens")
    if max_tokens is None:
        return cap if cap < room else None
    return min(max_tokens, cap)


def usage_info(usages: list[Usage], reasoning_tokens: int = 0) -> UsageInfo:
    """Sums the usage of one or more engine requests (a completions call may send several prompts)."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    energies = [u.energy_joules for u in usages]
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(sum(u.cached_tokens for u in usages)),
                     completion_tokens_details=CompletionTokensDetails(reasoning_tokens),
                     energy_joules=None if None in energies else sum(e for e in energies if e is not None))


def finish_reason(reason: str | None) -> str | None:
    # The engine's "abort" only reaches a client whose stream we cut; OpenAI has no such value.
    return "stop" if reason == "abort" else reason


def sse(event: msgspec.Struct) -> bytes:
    return b"data: " + ENCODER.encode(event) + b"\n\n"


def sse_done() -> bytes:
    return _DONE


def json_response(body: msgspec.Struct) -> Response:
    return Response(body=ENCODER.encode(body))


async def start(outputs: AsyncIterator[RequestOutput]) -> Started:
    """Awaits the first output so that the engine's refusals (a prompt too long, ...) surface before
    any response byte is sent; returns an iterator over all outputs that aborts the request if closed
    early, even before it was read."""
    return Started(await anext(outputs), outputs)


@dataclass(slots=True)
class Started:
    """A started request's outputs: the first, then the rest. Not an async generator: closing one
    that was never iterated skips its body, cleanup included, which left the request generating
    (a completions call whose later prompt was refused, or whose client left while it started)."""

    first: RequestOutput | None
    rest: AsyncIterator[RequestOutput]

    def __aiter__(self) -> Started:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return await anext(self.rest)

    async def aclose(self) -> None:
        self.first = None
        await self.rest.aclose()  # type: ignore[attr-defined]
