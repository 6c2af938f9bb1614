"""How the gateway reaches an engine: over pooled HTTP, or in process for `llmaas serve`.

Both speak the same thing, the engine's HTTP API (OpenAI routes plus /internal/load): the internal
protocol is OpenAI's streaming protocol over keep-alive connections, one stream per request, so the
gateway can front any OpenAI-compatible server, and `llmaas serve` only skips the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from gateway.fleet.config import split_url
from gateway.fleet.http_client import ConnectionPool, UpstreamError, UpstreamResponse
from gateway.http import Request, Response, Router, StreamingResponse


class BackendResponse(Protocol):
    status: int
    headers: dict[str, str]

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    def close(self) -> None:
        """Ends the exchange; before the body's end it aborts the engine's request."""


class Backend(Protocol):
    name: str

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> BackendResponse: ...

    def close(self) -> None: ...


class HttpBackend:
    """An engine host at http://host:port, through a pool of keep-alive connections."""

    def __init__(self, url: str, connect_timeout_s: float, first_byte_timeout_s: float,
                 api_key: str | None = None) -> None:
        host, port = split_url(url)
        self.name = url.rstrip("/")
        self._pool = ConnectionPool(host, port, connect_timeout_s)
        self._first_byte_timeout_s = first_byte_timeout_s
        # The engine's key (`llmaas engine --api-key`), last of every request's headers.
        self.authorization = f"Bearer {api_key}" if api_key else None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> UpstreamResponse:
        all_headers = [("content-type", "application/json")] if body else []
        all_headers.extend(headers or ())
        if self.authorization is not None:
            all_headers.append(("authorization", self.authorization))
        return await self._pool.request(method, path, body, all_headers, self._first_byte_timeout_s)

    @property
    def open_connections(self) -> int:
        return self._pool.num_open

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) it connects to."""
        return self._pool.host, self._pool.port

    def close(self) -> None:
        self._pool.close()


class LocalResponse:
    def __init__(self, response: Response | StreamingResponse) -> None:
        self.status = response.status
        self.headers = {name.lower(): value for name, value in response.headers}
        self.headers["content-type"] = response.content_type
        self._response = response
        self._done = isinstance(response, Response)

    async def chunks(self) -> AsyncIterator[bytes]:
        response = self._response
        if isinstance(response, Response):
            yield response.body
            return
        try:
            async for chunk in response.chunks:
                yield chunk
        except Exception as exc:  # the engine's stream broke: the same failure as a lost connection
            raise UpstreamError(f"local engine stream failed: {exc!r}", True) from exc
        self._done = True

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        if not self._done and isinstance(self._response, StreamingResponse):
            self._done = True
            # Closing the engine's generator aborts its request, which frees its KV blocks.
            asyncio.ensure_future(self._response.chunks.aclose())  # type: ignore[attr-defined]


class LocalBackend:
    """The engine's own router, called in process: `llmaas serve` with no loopback socket."""

    def __init__(self, router: Router, name: str = "local") -> None:
        self.name = name
        self._router = router

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> LocalResponse:
        handler, params = self._router.resolve(method, path)
        request = Request(method=method, path=path, query_string="",
                          headers={name.lower(): value for name, value in headers or ()},
                          body=body, client=None, path_params=params)
        return LocalResponse(await handler(request))

    def close(self) -> None:
        pass
