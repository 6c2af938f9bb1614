"""pytest-benchmark timings of the gateway's per-request hot paths: HTTP parse and encode on one
connection, one chat completion through every stage (auth, limits, ledger, audit, security) to an
instant backend, and the prompt-security check. Run by `make microbench`."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import security
from gateway.http import Request, Response, Router
from gateway.http.limits import ServerLimits, ServerState
from gateway.http.protocol import HttpConnection

CHAT = b'{"model":"m","messages":[{"role":"user","content":"Say ok."}],"max_tokens":1}'


class Capture:
    """The transport side of a connection: collects what the server writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 9) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_http_parse_route_encode(benchmark, loop: asyncio.AbstractEventLoop) -> None:
    """One keep-alive POST parsed, routed to a handler that decodes its JSON body and answers JSON."""
    decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()

    async def echo(request: Request) -> Response:
        body = decoder.decode(request.body)
        return Response(body=encoder.encode({"id": "x", "object": "chat.completion", "model": body["model"]}))

    router = Router()
    router.add("POST", "/v1/chat/completions", echo)
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"authorization: Bearer llmaas-abc\r\ncontent-length: " + str(len(CHAT)).encode() + b"\r\n\r\n" + CHAT)

    async def setup() -> tuple[HttpConnection, Capture]:
        connection, transport = HttpConnection(ServerState(router, ServerLimits())), Capture()
        connection.connection_made(transport)  # type: ignore[arg-type]
        return connection, transport

    connection, transport = loop.run_until_complete(setup())

    async def one() -> None:
        start = len(transport.data)
        connection.data_received(request)
        while len(transport.data) == start or not transport.data.endswith(b"}"):
            await asyncio.sleep(0)

    benchmark(lambda: loop.run_until_complete(one()))
    assert transport.data.startswith(b"HTTP/1.1 200") and transport.data.endswith(b'"model":"m"}')


def test_gateway_request_through_every_stage(benchmark, loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    """Proxy.handle of a chat completion with tenancy (key, tier limits, ledger, audit) and prompt
    security on, to the instant backend of bench/instant_backend.py on loopback."""
    from bench.instant_backend import serve as serve_backend
    from bench.tenancy_overhead import build
    from gateway.fleet.config import GatewayConfig, ModelEntry
    from gateway.gateway_server import Gateway

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tenancy, header = build(tmp_path / "bench.db")

    async def start() -> tuple[Gateway, asyncio.Task[None]]:
        backend = asyncio.create_task(serve_backend(port))
        await asyncio.sleep(0.2)
        gateway = Gateway(GatewayConfig(models=[ModelEntry(name="m", hosts=[f"http://127.0.0.1:{port}"])]),
                          tenancy=tenancy)
        await gateway.start()
        return gateway, backend

    gateway, backend = loop.run_until_complete(start())

    async def one() -> int:
        request = Request(method="POST", path="/v1/chat/completions", query_string="",
                          headers={"authorization": header, "content-type": "application/json"},
                          body=CHAT, client=("127.0.0.1", 1))
        return (await gateway.proxy.handle(request)).status  # type: ignore[union-attr]

    try:
        assert benchmark(lambda: loop.run_until_complete(one())) == 200
    finally:
        loop.run_until_complete(gateway.stop())
        backend.cancel()
        loop.run_until_complete(asyncio.sleep(0))


@pytest.mark.parametrize("language,text", [
    ("en", "Could you summarise the attached report in three bullet points for the board? " * 8),
    ("zh", "请把附件中的报告总结成三个要点，供董事会参考。我们需要在周五之前完成。" * 8),
])
def test_security_check_short_prompt(benchmark, language: str, text: str) -> None:
    security.warm()
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]
    assert benchmark(lambda: security.check(messages, tenant=None).action) == "allow"


@pytest.mark.parametrize("implementation", ["lane", "zlib"])
def test_journal_frame_crc32(benchmark, implementation: str) -> None:
    """The checksum of one lane journal frame (~200 bytes: a request's usage row): the lane's, sliced by
    8 bytes (csrc/gateway/lane_journal.cpp), beside zlib.crc32, which the Python journal uses."""
    import zlib

    native = pytest.importorskip("gateway._native", reason="the native lane is not built")
    frame = bytes(range(200))
    crc = native.journal_crc32 if implementation == "lane" else zlib.crc32
    assert benchmark(crc, frame) == zlib.crc32(frame)
