"""Listening socket, TLS, graceful shutdown, and a `run` helper that prefers uvloop."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.http.app import Router
from gateway.http.limits import ServerLimits, ServerState
from gateway.http.protocol import ConnectionCount, HttpConnection

try:
    import uvloop
except ImportError:  # Windows, or a minimal install: the stdlib loop works too, only slower
    uvloop = None


class Serving(Protocol):
    """A running server: the asyncio one below, or a native lane in front of it (gateway/native_lane.py)."""

    @property
    def port(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    async def shutdown(self, deadline_s: float) -> None: ...


class Lane(Serving, Protocol):
    def start(self) -> None: ...


# Serves a listening socket natively; hands what it does not serve to connections of this state.
LaneFactory = Callable[[socket.socket, ServerState, ConnectionCount | None], Lane]


class Server:
    def __init__(self, server: asyncio.AbstractServer, state: ServerState) -> None:
        self._server = server
        self._state = state

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def in_flight(self) -> int:
        return self._state.in_flight

    async def shutdown(self, deadline_s: float) -> None:
        """Stop accepting, close idle connections, let in-flight work finish until the deadline."""
        state = self._state
        self._server.close()
        state.begin_shutdown()
        if not await _wait_closed(state, deadline_s):
            state.cut_streams()  # an SSE stream ends with an error event, then the stragglers go
            await _wait_closed(state, 1.0)
            state.abort_connections()
            # abort() reports connection_lost on the next loop iterations.
            await _wait_closed(state, 1.0)
        await self._server.wait_closed()


async def _wait_closed(state: ServerState, timeout_s: float) -> bool:
    if not state.connections:
        return True
    try:
        await asyncio.wait_for(state.all_closed.wait(), timeout_s)
    except asyncio.TimeoutError:
        return False
    return True


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(certfile, keyfile)
    return context


async def serve(
    router: Router,
    host: str,
    port: int,
    limits: ServerLimits | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    connections: ConnectionCount | None = None,
    lane: LaneFactory | None = None,
) -> Serving:
    """connections: a count this server keeps of its open connections (a gateway's metrics read it).
    lane: serves the listening socket natively, handing the rest to this server (no TLS)."""
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile")
    context = tls_context(certfile, keyfile) if certfile and keyfile else None
    state = ServerState(router, limits or ServerLimits())
    if lane is not None and context is None:
        native = lane(_listening_socket(host, port), state, connections)
        native.start()
        return native
    server = await asyncio.get_running_loop().create_server(
        lambda: HttpConnection(state, connections), host, port, ssl=context, reuse_address=True
    )
    return Server(server, state)


def _listening_socket(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.create_server(address, family=family, backlog=1024)
    sock.setblocking(False)
    return sock


def run(
    router: Router,
    host: str,
    port: int,
    limits: ServerLimits | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown_deadline_s: float = 30.0,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    connections: ConnectionCount | None = None,
    lane: LaneFactory | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully; uses uvloop when installed.
    on_startup runs in the server's loop before it listens (background tasks start there);
    on_shutdown after the last connection closed."""

    async def main() -> None:
        if on_startup is not None:
            await on_startup()
        # Everything built so far (a model's loader and torch's ~10^5 objects) lives as long as the
        # process: kept out of the collector, a full collection no longer walks it (one took ~100
        # ms in `llmaas serve`, a stall every stream saw as one late token).
        gc.collect()
        gc.freeze()
        server = await serve(router, host, port, limits, certfile, keyfile, connections, lane)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.shutdown(shutdown_deadline_s)
        if on_shutdown is not None:
            await on_shutdown()

    if uvloop is None:
        asyncio.run(main())
    elif sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(main())
