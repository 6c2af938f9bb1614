"""Browsers calling the API from another origin (gateway/http/cors.py): a preflight answered, every
answer readable by an allowed origin, nothing added for clients outside browsers, and a gateway's
native lane handing such requests to the Python server."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gateway.http import serve
from tests.gateway.test_http_protocol import LIMITS, Probe, make_router, read_response
from tests.gateway.test_native_lane import chat, engines, exchange, gateways, request
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import parse_response

ORIGIN = "https://app.example"


async def ask(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        status, headers, body, _ = await read_response(reader)
        return status, headers, body
    finally:
        writer.close()


def run(origins: tuple[str, ...], test) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        server = await serve(make_router(Probe()), "127.0.0.1", 0, replace(LIMITS, cors_origins=origins))
        try:
            await asyncio.wait_for(test(server.port), 10)
        finally:
            await server.shutdown(0.5)
    asyncio.run(main())


PREFLIGHT = (b"OPTIONS /echo HTTP/1.1\r\nhost: x\r\norigin: https://app.example\r\n"
             b"access-control-request-method: POST\r\naccess-control-request-headers: authorization, content-type\r\n\r\n")
ECHO = b"POST /echo HTTP/1.1\r\nhost: x\r\norigin: https://app.example\r\ncontent-length: 2\r\n\r\nhi"


@pytest.mark.parametrize("origins,allow", [(("*",), "*"), ((ORIGIN, "https://other.example"), ORIGIN)])
def test_an_allowed_origin_gets_its_preflight_and_readable_answers(origins: tuple[str, ...], allow: str) -> None:
    async def test(port: int) -> None:
        status, headers, _ = await ask(port, PREFLIGHT)
        assert status == 204 and headers["access-control-allow-origin"] == allow
        assert "content-length" not in headers  # a 204 has no body, and says no length (RFC 9110 8.6)
        assert "POST" in headers["access-control-allow-methods"]
        assert headers["access-control-allow-headers"] == "authorization, content-type"
        assert int(headers["access-control-max-age"]) > 0
        for data in (ECHO, b"GET /nope HTTP/1.1\r\nhost: x\r\norigin: https://app.example\r\n\r\n"):
            status, headers, _ = await ask(port, data)
            assert status in (200, 404) and headers["access-control-allow-origin"] == allow
            assert headers["access-control-expose-headers"] == "*" and headers["vary"] == "origin"
        # Outside a browser: no CORS header at all.
        _, headers, _ = await ask(port, b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert not any(name.startswith("access-control") for name in headers)
    run(origins, test)


@pytest.mark.parametrize("origins", [("https://other.example",), ()])
def test_an_origin_not_allowed_gets_no_cors_headers(origins: tuple[str, ...]) -> None:
    async def test(port: int) -> None:
        status, headers, _ = await ask(port, PREFLIGHT)
        assert status == 403 and "access-control-allow-origin" not in headers
        status, headers, _ = await ask(port, ECHO)
        assert status == 200 and "access-control-allow-origin" not in headers  # the browser withholds it
    run(origins, test)


def test_the_native_lane_hands_browsers_to_the_python_server() -> None:
    pytest.importorskip("gateway._native", reason="the native lane is not built")

    async def test() -> None:
        async with engines(FakeEngine("a")) as urls, gateways(urls) as (python, native, gateway):
            data = request(chat(), extra=f"origin: {ORIGIN}\r\n")
            a, b = parse_response(await exchange(python, data)), parse_response(await exchange(native, data))
            assert a.status == b.status == 200
            assert a.headers["access-control-allow-origin"] == b.headers["access-control-allow-origin"] == "*"
            assert gateway.lane.handed_off == 1  # type: ignore[union-attr]
    asyncio.run(asyncio.wait_for(test(), 30))
