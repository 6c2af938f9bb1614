"""One request's answer: run its handler, write its response (whole or streamed), honour flow control.

The connection (protocol.py) parses and queues requests; for each one, in order, it makes a
RequestCycle, whose state lives exactly as long as that answer. Flow control is the connection's
(one transport, one write buffer), shared with its cycles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.http.app import (Request, Response, RouteError, StreamingResponse, encode_head, encode_response,
                              error_response)
from gateway.http import cors
from gateway.http.limits import ServerState

log = logging.getLogger(__name__)


class FlowControl:
    """The transport's write gate: writers await drain() while its buffer is above the high-water
    mark. A client that reads nothing of it for `send_timeout_s` is cut off (`on_stall`)."""

    __slots__ = ("_writable", "closed", "_send_timeout_s", "_buffered", "_on_stall")

    def __init__(self, send_timeout_s: float = 30.0, buffered: Callable[[], int] = lambda: 0,
                 on_stall: Callable[[], None] = lambda: None) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self._send_timeout_s = send_timeout_s
        self._buffered, self._on_stall = buffered, on_stall

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def close(self) -> None:
        """The connection is gone: nobody may wait for a drain that will never come."""
        self.closed = True
        self._writable.set()

    async def drain(self) -> None:
        while not self.closed and not self._writable.is_set():
            before = self._buffered()
            try:
                await asyncio.wait_for(self._writable.wait(), self._send_timeout_s)
            except asyncio.TimeoutError:
                if self._buffered() >= before:  # not a byte read in all that time
                    self._on_stall()
                    self.close()


def write_response(transport: asyncio.Transport, state: ServerState, response: Response, keep_alive: bool,
                   head_only: bool = False) -> bool:
    """Writes a whole response (its head alone answers a HEAD); returns whether the connection stays open."""
    keep_alive = keep_alive and not state.shutting_down
    transport.write(encode_response(response, keep_alive, head_only))
    return keep_alive


# What an SSE stream still going at the shutdown deadline ends with.
_SHUTDOWN_EVENT = b'data: {"error":{"message":"The server is shutting down; the response is incomplete.",' \
                  b'"type":"server_error","param":null,"code":"server_shutting_down"}}\n\n'


def _frame(chunk: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk


class RequestCycle:
    __slots__ = ("_state", "_transport", "_flow", "request", "keep_alive")

    def __init__(self, state: ServerState, transport: asyncio.Transport, flow: FlowControl, request: Request,
                 keep_alive: bool) -> None:
        self._state = state
        self._transport = transport
        self._flow = flow
        self.request = request
        self.keep_alive = keep_alive

    async def run(self) -> bool:
        """Runs the handler and writes its response; returns whether the connection stays open."""
        state, request = self._state, self.request
        head_only = request.method == "HEAD"
        if state.in_flight >= state.limits.max_concurrency:
            overloaded = error_response(
                503, "Server is overloaded, retry later", "server_overloaded", type_="server_error"
            )
            return write_response(self._transport, state, overloaded, self.keep_alive, head_only)
        origin = request.headers.get("origin")
        allow = cors.allowed_origin(origin, state.limits.cors_origins) if origin is not None else None
        if origin is not None and cors.is_preflight(request):
            return write_response(self._transport, state, cors.preflight(request, allow), self.keep_alive)
        try:
            handler, request.path_params = state.router.resolve(request.method, request.path)
        except RouteError as exc:
            if allow is not None:
                exc.response.headers.extend(cors.answer_headers(allow))
            return write_response(self._transport, state, exc.response, self.keep_alive, head_only)
        state.in_flight += 1
        try:
            try:
                response = await handler(request)
            except Exception:
                log.exception("handler failed: %s %s", request.method, request.path)
                response = error_response(500, "Internal server error", "internal_error", type_="server_error")
            if allow is not None:
                response.headers.extend(cors.answer_headers(allow))
            if isinstance(response, StreamingResponse):
                return await self._stream(response, head_only)
            return write_response(self._transport, state, response, self.keep_alive, head_only)
        finally:
            state.in_flight -= 1

    async def _stream(self, response: StreamingResponse, head_only: bool) -> bool:
        transport, flow = self._transport, self._flow
        # An HTTP/1.0 client does not decode chunks (RFC 9112 6.1): its body ends with the connection.
        chunked = self.request.http_version != "1.0"
        keep_alive = self.keep_alive and chunked and not self._state.shutting_down
        chunks = response.chunks
        transport.write(encode_head(response.status, response.headers, response.content_type, keep_alive, None,
                                    chunked))
        task = asyncio.current_task()
        assert task is not None
        self._state.streams.add(task)
        try:
            if head_only:  # not even the last chunk: a HEAD's answer has no body at all
                return keep_alive
            async for chunk in chunks:
                if flow.closed:
                    return False
                if chunk:  # an empty chunk would end the chunked body early
                    transport.write(_frame(chunk, chunked))
                    # A slow reader blocks its stream here instead of growing our write buffer.
                    await flow.drain()
            if flow.closed:
                return False
            return self._terminate(chunked) and keep_alive
        except asyncio.CancelledError:
            if not self._state.streams_cut:
                raise
            task.uncancel()  # ours, and handled: the connection's worker goes on to close it
            if response.content_type.startswith("text/event-stream") and not flow.closed:
                transport.write(_frame(_SHUTDOWN_EVENT, chunked))
                self._terminate(chunked)
            return False  # else cut as below: the missing last chunk says so
        except Exception:
            # Headers are out; closing without the terminating chunk tells the client it is cut.
            log.exception("stream failed mid-response")
            return False
        finally:
            self._state.streams.discard(task)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _terminate(self, chunked: bool) -> bool:
        """Ends a streamed body: the last chunk, or nothing when the close ends it."""
        if chunked:
            self._transport.write(b"0\r\n\r\n")
        return chunked
