"""Several prompts streamed at once: their outputs interleave as they come, and leaving closes all.

The end-to-end check (official client, real model, OpenAI's i * n + j indexing) is in test_openai_api.py.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.openai.merge import merge_streams


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
