"""Cross-origin calls from browsers (CORS), as OpenAI's API and vLLM answer them: any allowed
origin may call with its bearer token (no cookies are involved, so no credentials are allowed),
read the answer and its headers (x-ratelimit-*, a rotated key's notice), and ask first with a
preflight. The allowed origins are the server's `cors_origins` ("*": every one; none: CORS off).

Only requests that carry an `Origin` header are touched: API clients outside browsers never see a
CORS header (and the gateway's native lane hands such requests to the Python server)."""

from __future__ import annotations

from gateway.http.app import Request, Response, error_response

MAX_AGE_S = 600  # how long a browser may reuse a preflight's answer
_METHODS = "DELETE, GET, OPTIONS, POST, PUT"


def allowed_origin(origin: str, allowed: tuple[str, ...]) -> str | None:
    """The value of access-control-allow-origin for `origin`, or None when it is not allowed."""
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def is_preflight(request: Request) -> bool:
    return request.method == "OPTIONS" and "access-control-request-method" in request.headers


def preflight(request: Request, allow: str | None) -> Response:
    if allow is None:
        return error_response(403, "This origin may not call this server.", "cors_origin_not_allowed")
    headers = [("access-control-allow-origin", allow), ("access-control-allow-methods", _METHODS),
               ("access-control-max-age", str(MAX_AGE_S)), ("vary", "origin")]
    asked = request.headers.get("access-control-request-headers")
    if asked:
        headers.append(("access-control-allow-headers", asked))
    return Response(status=204, headers=headers)


def answer_headers(allow: str) -> list[tuple[str, str]]:
    """On an answer to an allowed origin: it may read the body and every header."""
    return [("access-control-allow-origin", allow), ("access-control-expose-headers", "*"), ("vary", "origin")]
