"""A streamed response's usage so far, as SSE comment events for the gateway that asked for them.

The gateway bills every request from the engine's counts. A stream that ends early (the client left,
the engine died) never reaches OpenAI's usage chunk, so when a request carries `x-llmaas-usage:
comments` the engine front interleaves `: usage {...}` comments: the response's cumulative prompt,
cached, completion and reasoning tokens, over all choices and all prompts. SSE clients ignore
comments by spec; the gateway reads them and never relays them.

Each comment goes out *before* the chunks of the engine step it counts, so whatever content reached
the gateway is always covered by the last comment it read. What the ledger calls "produced": every
token the engine reported to the gateway, delivered to the client or not (held back by a stop-string
check, in flight when the client left); tokens the engine computed after the gateway stopped reading
(at most the step in flight when the abort landed) are not billed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from engine.outputs import RequestOutput
from gateway.http import Request

USAGE_HEADER = "x-llmaas-usage"
USAGE_COMMENTS = "comments"
COMMENT_PREFIX = b": usage "


class UsageComment(msgspec.Struct):
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


_ENCODER = msgspec.json.Encoder()


def wants_usage_comments(request: Request) -> bool:
    return request.headers.get(USAGE_HEADER) == USAGE_COMMENTS


@dataclass(slots=True)
class UsageTally:
    """Cumulative counts of one response's engine requests (one per prompt), each request's exact
    usage replacing its running count once the engine reports it (its last output)."""

    prompt: list[int]  # known at the start: the prompt's token ids are counted before generation
    cached: list[int] = field(default_factory=list)
    completion: list[int] = field(default_factory=list)
    _sent: UsageComment | None = None

    def __post_init__(self) -> None:
        self.cached = [0] * len(self.prompt)
        self.completion = [0] * len(self.prompt)

    def add(self, index: int, output: RequestOutput) -> None:
        """Counts one output of the `index`-th engine request."""
        if output.usage is not None:
            usage = output.usage
            self.prompt[index], self.cached[index] = usage.prompt_tokens, usage.cached_tokens
            self.completion[index] = usage.completion_tokens
        else:
            self.completion[index] += sum(len(delta.token_ids) for delta in output.deltas)

    def current(self, reasoning_tokens: int = 0) -> UsageComment:
        return UsageComment(sum(self.prompt), sum(self.cached), sum(self.completion), reasoning_tokens)

    def comment(self, reasoning_tokens: int = 0) -> bytes:
        """The comment event for the counts so far, or b"" when nothing changed since the last."""
        now = self.current(reasoning_tokens)
        if now == self._sent:
            return b""
        self._sent = now
        return COMMENT_PREFIX + _ENCODER.encode(now) + b"\n\n"
