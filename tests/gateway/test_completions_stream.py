"""Several prompts streamed at once: their outputs interleave as they come, and leaving closes all.

The end-to-end check (official client, real model, OpenAI's i * n + j indexing) is in test_openai_api.py.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from engine.outputs import RequestOutput, SequenceDelta
from engine.sampling_params import SamplingParams
from gateway.http import Request
from gateway.openai.completions import create_completion
from gateway.openai.merge import merge_streams
from gateway.openai.serving import ServingContext


class Source:
    def __init__(self, name: str, delays: list[float], fail_at: int | None = None) -> None:
        self.name, self.delays, self.fail_at = name, delays, fail_at
        self.closed = False

    async def items(self) -> AsyncIterator[str]:
        try:
            for i, delay in enumerate(self.delays):
                await asyncio.sleep(delay)
                if i == self.fail_at:
                    raise RuntimeError(f"{self.name} failed")
                yield f"{self.name}{i}"
        finally:
            self.closed = True


def test_items_arrive_in_time_order_tagged_with_their_stream() -> None:
    async def main() -> list[tuple[int, str]]:
        a, b = Source("a", [0.0, 0.06]), Source("b", [0.03, 0.06])
        return [pair async for pair in merge_streams([a.items(), b.items()])]

    assert asyncio.run(main()) == [(0, "a0"), (1, "b0"), (0, "a1"), (1, "b1")]


def test_an_error_in_one_stream_surfaces_and_closes_the_others() -> None:
    async def main() -> tuple[Source, Source]:
        a, b = Source("a", [0.0, 0.01], fail_at=1), Source("b", [0.0, 5.0])
        with pytest.raises(RuntimeError, match="a failed"):
            async for _ in merge_streams([a.items(), b.items()]):
                pass
        return a, b

    a, b = asyncio.run(main())
    assert a.closed and b.closed


def test_closing_early_closes_every_stream() -> None:
    async def main() -> list[Source]:
        sources = [Source(name, [0.0, 5.0]) for name in "abc"]
        merged = merge_streams([s.items() for s in sources])
        await anext(merged)
        await merged.aclose()  # the client went away
        return sources

    assert all(s.closed for s in asyncio.run(main()))


def test_one_stream_passes_through() -> None:
    async def main() -> list[tuple[int, str]]:
        return [pair async for pair in merge_streams([Source("a", [0, 0]).items()])]

    assert asyncio.run(main()) == [(0, "a0"), (0, "a1")]


class StubEngine:
    """Answers the first prompt at once and the second never, recording which requests were closed."""

    def __init__(self) -> None:
        self.engine = SimpleNamespace(max_model_len=64, pooling=None)  # a generating engine
        self.closed: list[str] = []

    async def generate(self, prompt: object, params: SamplingParams, request_id: str,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        try:
            while True:
                if request_id.endswith("-1"):
                    await asyncio.Event().wait()
                yield RequestOutput(request_id, [SequenceDelta(0, [1], "x")])
                await asyncio.sleep(0.01)
        finally:
            self.closed.append(request_id[-1])


def completion(prompts: list[list[int]], stream: bool) -> Request:
    body = {"model": "m", "prompt": prompts, "max_tokens": 8, "stream": stream}
    return Request("POST", "/v1/completions", "", {}, json.dumps(body).encode(), None)


@pytest.mark.parametrize("stream", [False, True])
def test_leaving_while_later_prompts_start_stops_the_started_ones(stream: bool) -> None:
    async def main() -> list[str]:
        engine = StubEngine()
        ctx = ServingContext(engine, ["m"], reasoning_markers=None)  # type: ignore[arg-type]
        handler = asyncio.create_task(create_completion(ctx, completion([[1], [2]], stream)))
        await asyncio.sleep(0.05)  # prompt 0 runs; prompt 1 waits for its first output
        handler.cancel()  # what the server does when the client's connection drops
        with pytest.raises(asyncio.CancelledError):
            await handler
        return sorted(engine.closed)  # now, not after asyncio.run has finalized what was left open

    assert asyncio.run(main()) == ["0", "1"]


def test_a_started_request_closed_before_it_is_read_stops() -> None:
    async def main() -> list[str]:
        engine = StubEngine()
        ctx = ServingContext(engine, ["m"], reasoning_markers=None)  # type: ignore[arg-type]
        outputs = await ctx.generate([1], SamplingParams(), "r-0")
        await outputs.aclose()  # a later prompt of the same call was refused
        return list(engine.closed)  # now, not after asyncio.run has finalized what was left open

    assert asyncio.run(main()) == ["0"]
