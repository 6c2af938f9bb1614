"""The step loop's thread and its waiters (engine/async_engine.py), with a stand-in for the model
engine: what matters here is who is told when that thread dies."""
from __future__ import annotations

import asyncio

import pytest

from engine.async_engine import AsyncLLMEngine
from engine.errors import EngineDeadError
from engine.sampling_params import SamplingParams

# The step loop re-raises what killed it, on its own thread, by design: it dies loudly.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class FailingStep:
    """Accepts requests; its first step raises, as a kernel fault would."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def add_request(self, request_id: str, *args: object) -> None:
        self.requests.append(request_id)

    def step(self) -> list:
        raise RuntimeError("device lost")

    def abort(self, request_id: str) -> None:
        return None


def test_every_waiter_is_told_when_the_step_loop_dies() -> None:
    engine = AsyncLLMEngine(FailingStep)  # type: ignore[arg-type]

    async def test() -> None:
        async def one(i: int) -> None:
            async for _ in engine.generate([1, 2, 3], SamplingParams(max_tokens=4), f"r{i}"):
                pass

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(3)), return_exceptions=True), 5)
        assert all(isinstance(r, EngineDeadError) for r in results)
        with pytest.raises(EngineDeadError, match="device lost"):  # and every later one at once
            await asyncio.wait_for(one(9), 5)

    asyncio.run(test())
    engine._thread.join(5)  # its death is reported within this test, not the next


def test_a_request_registered_as_the_loop_dies_is_told_too() -> None:
    # The loop tells the streams it sees as it dies; one registered just after that, past
    # generate()'s check of a live engine, used to wait for ever.
    engine = AsyncLLMEngine(FailingStep)  # type: ignore[arg-type]

    async def test() -> None:
        with pytest.raises(EngineDeadError):  # the loop dies on this one's step
            await asyncio.wait_for(anext(engine.generate([1], SamplingParams(max_tokens=1), "first")), 5)
        died, engine._dead = engine._dead, None  # as if generate()'s check had run just before

        class DiesOnRegistration(dict):
            def __setitem__(self, key: str, value: object) -> None:
                engine._dead = died  # ... and the loop died, telling no one, just after it
                super().__setitem__(key, value)

        engine._streams = DiesOnRegistration()  # type: ignore[assignment]
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(anext(engine.generate([1], SamplingParams(max_tokens=1), "late")), 2)

    asyncio.run(test())
    engine._thread.join(5)
