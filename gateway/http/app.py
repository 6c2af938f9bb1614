"""Request/response types and the router that maps (method, path) to a handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

import msgspec

# Built once: msgspec encoders are reusable and cheap to call, costly to create.
_JSON = msgspec.json.Encoder()


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query_string: str
    # Lowercased names; repeated headers are joined with ", " (RFC 9110 §5.3).
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int] | None
    path_params: dict[str, str] = field(default_factory=dict)
    http_version: str = "1.1"


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamingResponse:
    """Body sent with chunked transfer encoding; the iterator is aclose()d if the client leaves."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/event-stream"


Handler = Callable[[Request], Awaitable["Response | StreamingResponse"]]


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    type_: str = "invalid_request_error",
    param: str | None = None,
) -> Response:
    """An OpenAI-style JSON error body."""
    body = _JSON.encode(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
    return Response(status=status, body=body)


def encode_head(
    status: int,
    headers: list[tuple[str, str]],
    content_type: str,
    keep_alive: bool,
    length: int | None,
    chunked: bool = True,
) -> bytes:
    """The status line and headers; `length` None means a chunked body, or with `chunked` False
    (an HTTP/1.0 client, which does not decode chunks) a body that ends when the connection closes."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}"]
    if status in (204, 304):
        pass  # no body, and no Content-Length either (RFC 9110 8.6)
    elif length is not None:
        lines.append(f"content-length: {length}")
    elif chunked:
        lines.append("transfer-encoding: chunked")
    if not keep_alive:
        lines.append("connection: close")
    for name, value in headers:
        # A CR or LF from a handler would let it split the response (header injection).
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"invalid response header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """A whole response as it goes on the wire: head and body (the head alone answers a HEAD)."""
    head = encode_head(response.status, response.headers, response.content_type, keep_alive, len(response.body))
    return head if head_only else head + response.body


class RouteError(Exception):
    """No route for a request; carries the ready error response (404 or 405)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Router:
    """Exact paths plus `{param}` segments; exact routes win over parametrised ones."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[tuple[str, ...], dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        segments = tuple(path.strip("/").split("/"))
        if any(s.startswith("{") and s.endswith("}") for s in segments):
            for pattern, methods in self._patterns:
                if pattern == segments:
                    break
            else:
                methods = {}
                self._patterns.append((segments, methods))
        else:
            methods = self._exact.setdefault(path, {})
        methods[method.upper()] = handler

    def routes(self) -> list[tuple[str, str]]:
        """Every (method, path) served, parametrised paths as registered (`/v1/models/{model}`)."""
        out = [(method, path) for path, methods in self._exact.items() for method in methods]
        for segments, methods in self._patterns:
            out.extend((method, "/" + "/".join(segments)) for method in methods)
        return out

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """Return the handler and path parameters, or raise RouteError (404/405). `path` as it came
        (percent-encoded): `%2F` is not a `/` (RFC 3986), so an encoded form never reaches a route
        that a proxy in front of us filters by its plain path; parameters are decoded."""
        methods = self._exact.get(path)
        params: dict[str, str] = {}
        if methods is None:
            methods, params = self._match_pattern(path)
        if methods is None:
            raise RouteError(error_response(404, f"Not found: {path}", "not_found"))
        handler = methods.get(method)
        if handler is None and method == "HEAD":  # a GET without its body (RFC 9110 9.3.2)
            handler = methods.get("GET")
        if handler is None:
            response = error_response(405, f"Method {method} not allowed", "method_not_allowed")
            response.headers.append(("allow", ", ".join(sorted(methods))))
            raise RouteError(response)
        return handler, params

    def _match_pattern(self, path: str) -> tuple[dict[str, Handler] | None, dict[str, str]]:
        segments = path.strip("/").split("/")
        for pattern, methods in self._patterns:
            if len(pattern) != len(segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, segments):
                if want.startswith("{") and want.endswith("}"):
                    if not got:
                        break
                    params[want[1:-1]] = unquote(got)
                elif want != got:
                    break
            else:
                return methods, params
        return None, {}
