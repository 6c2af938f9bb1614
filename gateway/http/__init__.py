"""HTTP/1.1 front end shared by the gateway and the engine server."""

from __future__ import annotations

from gateway.http.app import Request, Response, Router, StreamingResponse, error_response
from gateway.http.limits import ServerLimits
from gateway.http.server import Server, run, serve

__all__ = [
    "Request",
    "Response",
    "Router",
    "Server",
    "ServerLimits",
    "StreamingResponse",
    "error_response",
    "run",
    "serve",
]
