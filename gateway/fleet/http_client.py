"""A pooled HTTP/1.1 client for gateway -> engine traffic: keep-alive connections, httptools parsing.

One `UpstreamConnection` carries one request at a time; the `ConnectionPool` of a host keeps idle
connections (most recently used first, so that surplus ones age out) and opens new ones on demand.
A response body is read through `UpstreamResponse.chunks()`; reading pauses while the consumer lags
more than a few chunks behind, so a slow client cannot make the gateway buffer an engine's stream.
A connection goes back to the pool only when its response was read to the end and both sides
agreed to keep it alive; anything else closes it, which an engine takes as the client leaving
(it aborts the request and frees its KV blocks).

The first-byte timeout also bounds each silence after it: a body or a stream that stops coming (a
frozen engine, a partition without a reset) fails like a lost connection instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools

# Body chunks queued before reading pauses, and the level at which it resumes.
_PAUSE_AT = 16
_RESUME_AT = 4
_EOF = object()


class UpstreamError(Exception):
    """The connection failed. `response_started`: some of the response had arrived (status line
    at least); when False, no response byte came and the request may be retried elsewhere.
    `stale`: the server closed the connection without a byte, before any timeout: a pooled
    connection it had closed while idle, which cannot have carried the request to it."""

    def __init__(self, message: str, response_started: bool, stale: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started
        self.stale = stale


class UpstreamResponse:
    """Status and headers as soon as they arrive; the body as an async iterator of chunks."""

    def __init__(self, conn: UpstreamConnection, idle_timeout_s: float) -> None:
        self._conn = conn
        self._idle_timeout_s = idle_timeout_s
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: deque[object] = deque()
        self._ready = asyncio.Event()
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        loop = asyncio.get_running_loop()
        while True:
            while not self._chunks:
                self._ready.clear()
                # A timer rather than asyncio.wait_for, which costs a task per chunk.
                timer = loop.call_later(self._idle_timeout_s, conn.stalled, self._idle_timeout_s)
                try:
                    await self._ready.wait()
                finally:
                    timer.cancel()
            item = self._chunks.popleft()
            if len(self._chunks) <= _RESUME_AT:
                conn.resume_reading()
            if item is _EOF:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(bytes, item)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        """Gives the connection back if the body was read to its end, else closes it."""
        self._conn.release(self)

    def _push(self, item: object) -> None:
        self._chunks.append(item)
        self._ready.set()
        if len(self._chunks) >= _PAUSE_AT:
            self._conn.pause_reading()


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._header_name = b""
        self._headers_done: asyncio.Future[None] | None = None
        self._paused = False
        self._keep_alive = False
        self._received = False  # any byte of the current request's response
        self._aborted = False  # closed by us, not by the server
        self.closed = False

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        response = self._response
        if response is None:
            return
        headers_done = self._headers_done is not None and self._headers_done.done()
        if headers_done and exc is None and not response.complete and _ends_at_close(response):
            response.complete = True  # a body without a length or chunks ends with the connection
            response._push(_EOF)
            return
        started = response.status != 0
        error = UpstreamError(f"connection to {self._pool.address} lost: {exc or 'closed by the server'}", started,
                              stale=not self._received and not self._aborted)
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_exception(error)
        elif not response.complete:
            response._push(error)

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad response from {self._pool.address}: {exc}", self._response.status != 0))

    # -- parser callbacks ----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        assert self._response is not None
        self._response.status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # llhttp forgets the message's keep-alive once it completes: read it now.
        self._keep_alive = self._parser.should_keep_alive()
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response._push(bytes(body))

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        response.complete = True
        response._push(_EOF)

    # -- use -----------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: bytes, headers: list[tuple[str, str]],
                      first_byte_timeout_s: float) -> UpstreamResponse:
        assert self._response is None and self._transport is not None, "one request at a time"
        response = UpstreamResponse(self, first_byte_timeout_s)
        self._response = response
        self._received = False
        self._headers_done = asyncio.get_running_loop().create_future()
        head = [f"{method} {path} HTTP/1.1", f"host: {self._pool.address}", f"content-length: {len(body)}"]
        head.extend(f"{name}: {value}" for name, value in headers)
        self._transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        # A timer rather than asyncio.wait_for, which costs a task per request.
        timer = asyncio.get_running_loop().call_later(first_byte_timeout_s, self._first_byte_timeout,
                                                      self._headers_done, first_byte_timeout_s)
        try:
            await self._headers_done
        except BaseException:
            self.abort()
            raise
        finally:
            timer.cancel()
        return response

    def _first_byte_timeout(self, headers_done: asyncio.Future[None], timeout_s: float) -> None:
        if not headers_done.done():
            headers_done.set_exception(
                UpstreamError(f"{self._pool.address} sent no response within {timeout_s:g} s", False))

    def stalled(self, timeout_s: float) -> None:
        """No byte of the body for timeout_s: the answer fails, the connection is dropped."""
        self._fail(UpstreamError(f"{self._pool.address} sent nothing for {timeout_s:g} s", True))

    def release(self, response: UpstreamResponse) -> None:
        if self._response is not response:
            return
        self._response = None
        self._headers_done = None
        self.resume_reading()
        if response.complete and not self.closed and self._keep_alive:
            self._pool.put_back(self)
        else:
            self.abort()

    def pause_reading(self) -> None:
        if not self._paused and self._transport is not None and not self.closed:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None and not self.closed:
            self._aborted = True
            self._transport.abort()
        self.closed = True
        self._pool.forget(self)

    def _fail(self, error: UpstreamError) -> None:
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_exception(error)
        elif self._response is not None:
            self._response._push(error)
        self.abort()


class ConnectionPool:
    """Keep-alive connections to one `host:port`."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 5.0, max_idle: int = 64) -> None:
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._idle: deque[UpstreamConnection] = deque()
        self.num_open = 0
        self._all: set[UpstreamConnection] = set()
        self._closed = False  # the gateway is stopping: no new connections

    async def request(self, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                      first_byte_timeout_s: float = 300.0) -> UpstreamResponse:
        """Sends one request. A reused connection that the server had already closed is retried
        once on a fresh connection: the server cannot have seen that request. A timeout or bytes
        that came back are the host's failure, never retried here."""
        headers = headers or []
        conn = self._take_idle()
        if conn is not None:
            try:
                return await conn.request(method, path, body, headers, first_byte_timeout_s)
            except UpstreamError as exc:
                if not exc.stale:
                    raise
        conn = await self._connect()
        return await conn.request(method, path, body, headers, first_byte_timeout_s)

    def put_back(self, conn: UpstreamConnection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            return
        self._idle.appendleft(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self.num_open -= 1
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.abort()

    def _take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.popleft()
            if not conn.closed:
                return conn
        return None

    async def _connect(self) -> UpstreamConnection:
        if self._closed:
            raise UpstreamError(f"connections to {self.address} are closed: the gateway is stopping", False)
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {self.address}: {exc or 'timed out'}", False) from None
        conn = cast(UpstreamConnection, protocol)
        self._all.add(conn)
        self.num_open += 1
        return conn


def _ends_at_close(response: UpstreamResponse) -> bool:
    """Whether the body is delimited by the close (RFC 9112 6.3: no length, not chunked)."""
    headers = response.headers
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower() \
        and response.status not in (204, 304) and response.status >= 200
