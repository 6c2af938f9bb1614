"""The console's page, script, style and vendored chart library, served from the package.

Files are read once at route setup and each registered as an exact route: no path from a request
ever reaches the file system (no traversal to guard), and serving is a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.http import Request, Response, Router

STATIC_DIR = Path(__file__).with_name("static")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".LICENSE": "text/plain; charset=utf-8"}
# The page loads nothing from elsewhere: a tight policy costs nothing and blunts injected markup.
# X-Frame-Options for browsers that predate frame-ancestors; no Referer leaves the console.
_PAGE_HEADERS = [("content-security-policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                  "base-uri 'none'; frame-ancestors 'none'"), ("x-content-type-options", "nosniff"),
                 ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"), ("cache-control", "no-cache")]


def _serve(body: bytes, content_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        return Response(body=body, content_type=content_type, headers=list(_PAGE_HEADERS))
    return handler


def add_static_routes(router: Router, prefix: str = "/console") -> list[str]:
    """`GET /console` (the page) and `GET /console/static/<file>`; returns the static paths."""
    router.add("GET", prefix, _serve((STATIC_DIR / "index.html").read_bytes(), _TYPES[".html"]))
    paths = []
    for path in sorted(STATIC_DIR.rglob("*")):
        if not path.is_file() or path.name == "index.html":
            continue
        url = f"{prefix}/static/{path.relative_to(STATIC_DIR).as_posix()}"
        content_type = _TYPES.get(path.suffix, "application/octet-stream")
        router.add("GET", url, _serve(path.read_bytes(), content_type))
        paths.append(url)
    return paths
