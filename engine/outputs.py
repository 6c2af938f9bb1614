"""What the engine hands back: per-step deltas while a request runs, and final results."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served by the prefix cache
    completion_tokens: int
    # Its share of the energy of the engine steps it was in, by tokens; None where no meter exists.
    energy_joules: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class SequenceDelta:
    """What one choice produced in one step."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "stop", "length" or "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class RequestOutput:
    """One step's news for one request; `usage` is set on the last one (finished=True)."""

    request_id: str
    deltas: list[SequenceDelta]
    finished: bool = False
    usage: Usage | None = None
    # An embedding request's only output carries its unit vector (None if it was aborted).
    embedding: list[float] | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class CompletionResult:
    """The whole of a finished request, as the offline `LLM` API returns it."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    usage: Usage | None = None
