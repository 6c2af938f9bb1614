"""Server-wide settings and state shared by every connection of one server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.http.app import Router

if TYPE_CHECKING:
    from gateway.http.protocol import HttpConnection


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    header_timeout_s: float = 10.0
    # From the end of the headers to the end of the body: a client trickling its body is cut off.
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    # An answer of which the client reads nothing for this long is dropped and its connection
    # closed: a client that never reads cannot hold a socket and an answer's memory for ever.
    send_timeout_s: float = 30.0
    # In-flight requests across all connections; beyond it requests get an early 503.
    max_concurrency: int = 1024
    # Parsed-but-unanswered requests per connection; beyond either bound reading pauses.
    max_pipelined: int = 16
    read_high_water: int = 1024 * 1024
    write_high_water: int = 256 * 1024
    # Browser origins that may call the server (gateway/http/cors.py): "*" every one, () none.
    cors_origins: tuple[str, ...] = ("*",)


class ServerState:
    """Shared by all connections of one server: config, router, counters, lifecycle."""

    def __init__(self, router: Router, limits: ServerLimits) -> None:
        self.router = router
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self.in_flight = 0
        self.shutting_down = False
        self.all_closed = asyncio.Event()
        self.streams: set[asyncio.Task[Any]] = set()  # the tasks writing a streamed body now
        self.streams_cut = False

    def begin_shutdown(self) -> None:
        """No new requests: idle connections close now, busy ones after their answer."""
        self.shutting_down = True
        for conn in list(self.connections):
            conn.begin_shutdown()

    def cut_streams(self) -> None:
        """At the shutdown deadline: streams still going end now, an SSE stream with an error
        event and its last chunk (a client then knows why it is incomplete), before the connections
        are aborted."""
        self.streams_cut = True
        for task in list(self.streams):
            task.cancel()

    def abort_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()
