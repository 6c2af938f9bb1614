"""HTTP/1.1 front end shared by the gateway and the engine server."""

from __future__ import annotations

from gateway.http.app import Request, Response, Router, StreamingResponse, error_response
from gateway.http.limits import ServerLimits
from gateway.http.server import LaneFactory, Server, Serving, run, serve

__all__ = [
    "Request",
    "Response",
    "Router",
    "LaneFactory",
    "Server",
    "Serving",
    "ServerLimits",
    "StreamingResponse",
    "error_response",
    "run",
    "serve",
]
