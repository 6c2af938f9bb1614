"""An asyncio front for LLMEngine: the step loop runs on its own thread, never on the event loop.

Requests and aborts reach the engine thread through a command queue; each request's outputs come
back to the asyncio loop that asked for them through call_soon_threadsafe into its own queue: one
call per loop per step, carrying that step's outputs for all of the loop's requests (each call
writes the loop's wake-up pipe, so a call per output cost a syscall and a loop wake-up each).
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from engine.errors import EngineDeadError, InvalidRequestError
from engine.llm_engine import EngineLoad, LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine | Callable[[], LLMEngine]) -> None:
        """engine: a built LLMEngine, or a function that builds one. Prefer the function: it then
        runs on the step-loop thread, which keeps that thread the only one that ever starts OpenMP
        teams. libgomp stops spinning between parallel regions once more threads sit in teams than
        there are CPUs, and every kernel call then pays a futex wake-up (a second team, left by
        loading on another thread, made decode steps 40% slower on 2 cores)."""
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._dead: BaseException | None = None
        build = (lambda: engine) if isinstance(engine, LLMEngine) else engine
        built: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(build, built), name="llmaas-engine", daemon=True)
        self._thread.start()
        result = built.get()
        if isinstance(result, BaseException):
            raise result
        self.engine: LLMEngine = result

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None,
                 priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Yields the request's outputs step by step; the last has finished=True and usage. Closing
        the iterator early (a client went away) aborts the request and frees its blocks."""
        request_id = request_id or f"req-{next(self._ids)}"
        return self._outputs(request_id, ("add", request_id, prompt, params, priority))

    async def embed(self, prompt: str | list[int], request_id: str | None = None, priority: int = 0) -> RequestOutput:
        """An embedding engine's vector for `prompt`: the request's one output, with `embedding` and
        usage (`embedding` None if it was aborted). Cancelling the call aborts the request."""
        request_id = request_id or f"req-{next(self._ids)}"
        outputs = self._outputs(request_id, ("embed", request_id, prompt, priority))
        try:
            async for output in outputs:
                if output.finished:
                    return output
        finally:
            await outputs.aclose()
        raise AssertionError("the engine ends every request with a finished output")

    async def _outputs(self, request_id: str, command: tuple) -> AsyncGenerator[RequestOutput, None]:
        """Sends `command` (which adds request_id) and yields its outputs until the finished one."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already running", param="request_id")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        if self._dead is not None:  # it died since the check above, telling only the streams it saw
            self._streams.pop(request_id, None)
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        self._commands.put(command)
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True  # refused or dead: nothing to abort
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(("abort", request_id))
            self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def load(self) -> EngineLoad:
        return self.engine.load()

    def shutdown(self) -> None:
        self._commands.put(("stop",))
        self._thread.join(timeout=30)

    def _run(self, build: Callable[[], LLMEngine], built: queue.SimpleQueue) -> None:
        try:
            self.engine = build()
        except BaseException as exc:  # a model that fails to load: the constructor raises it
            built.put(exc)
            return
        built.put(self.engine)
        try:
            while True:
                block = not self.engine.has_unfinished_requests()
                if not self._drain_commands(block):
                    return
                if self.engine.has_unfinished_requests():
                    self._deliver_step(self.engine.step())
        except BaseException as exc:  # the loop must tell every waiter why it stopped
            self._dead = exc
            for request_id in list(self._streams):
                self._deliver(request_id, EngineDeadError(f"the engine stopped: {exc!r}"))
            raise

    def _drain_commands(self, block: bool) -> bool:
        """Applies queued commands; waits for one when block. False once asked to stop."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            kind = command[0]
            if kind == "stop":
                return False
            if kind == "add":
                _, request_id, prompt, params, priority = command
                try:
                    self.engine.add_request(request_id, prompt, params, priority)
                except Exception as exc:  # a bad request fails alone, as its caller's exception
                    self._deliver(request_id, exc)
            elif kind == "embed":
                _, request_id, prompt, priority = command
                try:
                    self.engine.add_embedding_request(request_id, prompt, priority)
                except Exception as exc:
                    self._deliver(request_id, exc)
            elif kind == "abort":
                output = self.engine.abort(command[1])
                if output is not None:
                    self._deliver(command[1], output)

    def _deliver_step(self, outputs: list[RequestOutput]) -> None:
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream.queue, output))
        for loop, batch in batches.items():
            if len(batch) == 1:
                loop.call_soon_threadsafe(batch[0][0].put_nowait, batch[0][1])
            else:
                loop.call_soon_threadsafe(_put_all, batch)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


def _put_all(batch: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for stream_queue, output in batch:
        stream_queue.put_nowait(output)
