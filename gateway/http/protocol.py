"""One HTTP/1.1 connection: parsing with httptools, limits, timers, in-order answers, read flow control.

State is grouped by lifetime, as in uvicorn: the connection (transport, parser, timers, write gate),
the request being parsed (`_Incoming`), the queue of parsed requests waiting for their answer, and
the answer itself (`RequestCycle`, cycle.py). Pipelined requests are answered strictly in order by
one worker task per busy connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from gateway.http.app import Request, Response, error_response
from gateway.http.cycle import FlowControl, RequestCycle, write_response
from gateway.http.limits import ServerLimits, ServerState

__all__ = ["HttpConnection", "ServerLimits", "ServerState"]

log = logging.getLogger(__name__)


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; the response is sent, then the close."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(slots=True)
class _Incoming:
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    header_bytes: int = 0
    keep_alive: bool = True


# A queued item: a parsed request, or an error to send before closing; its keep-alive; its size.
_Queued = tuple["Request | Response", bool, int]


@dataclass(slots=True)
class ConnectionCount:
    """Connections open now on the servers given it: what a gateway's open-connections gauge reads.
    `native`: those the gateway's native lane holds (gateway/native_lane.py), read when asked."""

    open: int = 0
    native: Callable[[], int] | None = None

    def total(self) -> int:
        return self.open + (self.native() if self.native is not None else 0)


class HttpConnection(asyncio.Protocol):
    def __init__(self, state: ServerState, count: ConnectionCount | None = None) -> None:
        self._state = state
        self._count = count
        self._limits = state.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._closed = False
        self._flow = FlowControl(self._limits.send_timeout_s, self._buffered, self.abort)
        self._flush_timer: asyncio.TimerHandle | None = None
        # The request being parsed must arrive in time: its headers from its first byte, then its body.
        self._request_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        # Request being parsed.
        self._incoming: _Incoming | None = None
        self._headers_done = False
        self._raw_header_bytes = 0
        self._began_this_feed = False
        # No more requests will be parsed (error, upgrade): close once the queue drains.
        self._stop_parsing = False
        # A request that asked for a protocol upgrade (Upgrade: h2c, as `curl --http2` sends), which
        # we ignore (RFC 9110 7.8) and serve as HTTP/1.1: the parser stops at its head, so its body
        # (Content-Length bytes) is read here; the connection closes after its answer.
        self._upgrade_request: Request | None = None
        self._upgrade_body_left = 0
        self._upgrade_size = 0  # its head's bytes, for the queue's accounting; -1 once queued
        # Parsed requests awaiting their answer, and the task answering them.
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._reading_paused = False
        self._worker: asyncio.Task[None] | None = None

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        transport.set_write_buffer_limits(high=self._limits.write_high_water)
        self._state.connections.add(self)
        if self._count is not None:
            self._count.open += 1
        if self._state.shutting_down:
            transport.close()
            return
        self._maybe_arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._state.connections.discard(self)
        if self._count is not None:
            self._count.open -= 1
        if self._state.shutting_down and not self._state.connections:
            self._state.all_closed.set()
        self._cancel_timers()
        self._flow.close()
        self._queue.clear()
        # Cancelling the worker is how a disconnect aborts a running handler or stream.
        if self._worker is not None:
            self._worker.cancel()

    def eof_received(self) -> bool:
        # A half-close means the client is gone in practice (as in uvicorn): closing aborts
        # any running generation instead of streaming tokens nobody will read.
        return False

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._upgrade_request is not None:
            self._read_upgrade_body(data)
            return
        if self._stop_parsing:
            return
        self._began_this_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._stop_parsing = True  # no protocol upgrades; answer what was parsed, then close
            if self._upgrade_request is not None:
                self._read_upgrade_body(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Reject):
                # A bug of ours in a callback: the client still gets an answer, and the socket its
                # close (raised from here, a handed-over connection's would never close).
                log.error("failed to parse a request", exc_info=exc.__context__)
                self._reject(error_response(400, "Malformed HTTP request", "bad_request"))
                return
            self._reject(exc.__context__.response)
            return
        except httptools.HttpParserError as exc:
            self._reject(error_response(400, f"Malformed HTTP request: {exc}", "bad_request"))
            return
        if self._incoming is not None and not self._headers_done:
            # httptools buffers a partial header internally; count whole chunks fed while the
            # headers stay incomplete so that buffer cannot grow past the limit by one chunk.
            if not self._began_this_feed:
                self._raw_header_bytes += len(data)
            if max(self._raw_header_bytes, self._incoming.header_bytes) > self._limits.max_header_bytes:
                self._reject(_too_large_headers())
                return
        self._maybe_arm_idle()

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._incoming = _Incoming()
        self._headers_done = False
        self._raw_header_bytes = 0
        self._began_this_feed = True
        self._cancel_idle()
        self._request_timer = self._loop.call_later(self._limits.header_timeout_s, self._on_header_timeout)

    def on_url(self, url: bytes) -> None:
        assert self._incoming is not None
        self._incoming.url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._incoming is not None
        self._incoming.headers.append((name, value))
        self._count_header_bytes(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        assert self._incoming is not None and self._transport is not None
        self._cancel_request_timer()
        self._headers_done = True
        self._request_timer = self._loop.call_later(self._limits.body_timeout_s, self._on_body_timeout)
        self._incoming.keep_alive = self._parser.should_keep_alive()
        expects_continue = False
        for name, value in self._incoming.headers:
            lname = name.lower()
            if lname == b"content-length" and int(value) > self._limits.max_body_bytes:
                raise _Reject(_too_large_body(self._limits.max_body_bytes))
            if lname == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        # An interim 100 is only safe when no earlier response could interleave with it.
        if expects_continue and self._worker is None and not self._queue and \
                self._parser.get_http_version() != "1.0":  # an HTTP/1.0 client knows no 1xx
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self._incoming is not None
        if len(self._incoming.body) + len(body) > self._limits.max_body_bytes:
            raise _Reject(_too_large_body(self._limits.max_body_bytes))
        self._incoming.body += body

    def on_message_complete(self) -> None:
        assert self._incoming is not None
        incoming = self._incoming
        try:
            url = httptools.parse_url(bytes(incoming.url))
        except httptools.HttpParserInvalidURLError:
            raise _Reject(error_response(400, "Malformed HTTP request: invalid request target", "bad_request")) from None
        self._cancel_request_timer()
        self._incoming = None
        headers: dict[str, str] = {}
        for name, value in incoming.headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        method = self._parser.get_method().decode("ascii")
        request = Request(
            method=method,
            path=(url.path or b"").decode("latin-1"),
            query_string=(url.query or b"").decode("latin-1"),
            headers=headers,
            body=bytes(incoming.body),
            client=self._client,
            http_version=self._parser.get_http_version(),
        )
        if self._parser.should_upgrade() and method != "CONNECT":
            if "transfer-encoding" in headers:
                raise _Reject(error_response(400, "Malformed HTTP request: a chunked body with Upgrade",
                                             "bad_request"))
            self._upgrade_request = request
            self._upgrade_body_left = int(headers.get("content-length", "0"))
            self._upgrade_size = incoming.header_bytes
            if self._upgrade_body_left == 0:
                self._read_upgrade_body(b"")
            return
        self._enqueue((request, incoming.keep_alive, len(incoming.body) + incoming.header_bytes))

    def _read_upgrade_body(self, data: bytes) -> None:
        request = self._upgrade_request
        assert request is not None
        if self._upgrade_body_left <= 0:
            if self._upgrade_size < 0:
                return  # answered already; anything after it is not read
        else:
            take = data[:self._upgrade_body_left]
            request.body += take
            self._upgrade_body_left -= len(take)
            if self._upgrade_body_left > 0:
                return
        self._cancel_request_timer()
        self._stop_parsing = True
        self._enqueue((request, False, len(request.body) + self._upgrade_size))
        self._upgrade_size = -1

    # -- answering ------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark (or closed)."""
        await self._flow.drain()

    def begin_shutdown(self) -> None:
        """Close now if idle; a busy connection closes after its current response."""
        if self._worker is None and not self._queue and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _buffered(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _close(self) -> None:
        """Closes once the write buffer is flushed, as transport.close() does, but drops it when the
        client reads nothing of it for send_timeout_s."""
        assert self._transport is not None
        self._transport.close()
        self._watch_flush(-1)

    def _watch_flush(self, before: int) -> None:
        self._flush_timer = None
        buffered = self._buffered()
        if self._closed or buffered == 0:
            return
        if 0 <= before <= buffered:
            self.abort()
            return
        self._flush_timer = self._loop.call_later(self._limits.send_timeout_s, self._watch_flush, buffered)

    def _enqueue(self, item: _Queued) -> None:
        assert self._transport is not None
        self._queue.append(item)
        self._queued_bytes += item[2]
        limits = self._limits
        if not self._reading_paused and (
            len(self._queue) > limits.max_pipelined or self._queued_bytes > limits.read_high_water
        ):
            self._reading_paused = True
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._answer_queue())

    def _maybe_resume_reading(self) -> None:
        limits = self._limits
        if (
            self._reading_paused
            and not self._closed
            and not self._stop_parsing
            and len(self._queue) <= limits.max_pipelined // 2
            and self._queued_bytes <= limits.read_high_water // 2
        ):
            assert self._transport is not None
            self._reading_paused = False
            self._transport.resume_reading()

    def _reject(self, response: Response) -> None:
        self._cancel_request_timer()
        self._stop_parsing = True
        self._incoming = None
        self._upgrade_request = None
        self._enqueue((response, False, 0))

    async def _answer_queue(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._queue and not self._closed:
                # Pipelined requests from a client that does not read are answered no faster than it
                # reads: the write buffer stays near its high-water mark.
                await self._flow.drain()
                if self._closed or self._flow.closed:
                    return
                item, keep_alive, size = self._queue.popleft()
                self._queued_bytes -= size
                self._maybe_resume_reading()
                if isinstance(item, Response):
                    write_response(transport, self._state, item, keep_alive=False)
                    keep_alive = False
                else:
                    keep_alive = await RequestCycle(self._state, transport, self._flow, item, keep_alive).run()
                if not keep_alive or self._state.shutting_down:
                    self._close()
                    return
            if self._stop_parsing:
                self._close()
        except Exception:
            # A bug on our side (e.g. a bad response header): the stream state is unknown.
            log.exception("failed to answer a request")
            self._close()
        finally:
            self._worker = None
            self._maybe_arm_idle()

    # -- timers ---------------------------------------------------------------------------

    def _count_header_bytes(self, n: int) -> None:
        assert self._incoming is not None
        self._incoming.header_bytes += n
        if self._incoming.header_bytes > self._limits.max_header_bytes:
            raise _Reject(_too_large_headers())

    def _on_header_timeout(self) -> None:
        self._request_timer = None
        if self._closed or self._headers_done:
            return
        if self._reading_paused:  # we stopped reading, the client is not to blame
            self._request_timer = self._loop.call_later(self._limits.header_timeout_s, self._on_header_timeout)
            return
        self._reject(error_response(408, "Request headers not received in time", "request_timeout"))

    def _on_body_timeout(self) -> None:
        self._request_timer = None
        if self._closed or (self._incoming is None and self._upgrade_request is None):
            return
        if self._reading_paused:
            self._request_timer = self._loop.call_later(self._limits.body_timeout_s, self._on_body_timeout)
            return
        self._reject(error_response(408, "Request body not received in time", "request_timeout"))

    def _maybe_arm_idle(self) -> None:
        """Arms the keep-alive timer unless it runs: bytes that start no request (empty lines,
        which RFC 9112 2.2 lets a server skip) do not push it back."""
        if self._closed or self._worker is not None or self._queue or self._incoming is not None \
                or self._upgrade_request is not None or self._idle_timer is not None:
            return
        self._idle_timer = self._loop.call_later(self._limits.keepalive_timeout_s, self._on_idle_timeout)

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self._transport is not None and self._worker is None and not self._queue and self._incoming is None:
            self._close()

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_idle()
        self._cancel_request_timer()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None


def _too_large_headers() -> Response:
    return error_response(431, "Request headers too large", "headers_too_large")


def _too_large_body(limit: int) -> Response:
    return error_response(413, f"Request body exceeds {limit} bytes", "body_too_large")

