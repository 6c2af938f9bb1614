"""Raw-socket tests of the HTTP/1.1 server core against 127.0.0.1 on an ephemeral port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest

from gateway.http import Request, Response, Router, ServerLimits, StreamingResponse, serve
from gateway.http.server import Server

LIMITS = ServerLimits(
    max_header_bytes=1024,
    max_body_bytes=4096,
    header_timeout_s=0.3,
    body_timeout_s=0.4,
    keepalive_timeout_s=0.3,
    max_concurrency=2,
    send_timeout_s=0.6,
)
TIMEOUT = 3.0


class Probe:
    """Shared between the app and a test: what the handlers saw and gates to hold them."""

    def __init__(self) -> None:
        self.stream_closed = asyncio.Event()
        self.release = asyncio.Event()
        self.started = asyncio.Event()


def make_router(probe: Probe) -> Router:
    router = Router()

    async def echo(request: Request) -> Response:
        payload = {"method": request.method, "path": request.path, "body": request.body.decode()}
        return Response(200, msgspec.json.encode(payload))

    async def model(request: Request) -> Response:
        return Response(200, request.path_params["model"].encode(), content_type="text/plain")

    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    async def slow(request: Request) -> Response:
        probe.started.set()
        await probe.release.wait()
        return Response(200, b"slow")

    async def events(n: int, hold: bool) -> AsyncIterator[bytes]:
        try:
            for i in range(n):
                yield f"data: {i}\n\n".encode()
                if hold:
                    probe.started.set()
                    await probe.release.wait()
        finally:
            probe.stream_closed.set()

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(events(3, hold="hold" in request.query_string))

    router.add("POST", "/echo", echo)
    router.add("GET", "/echo", echo)
    router.add("GET", "/v1/models/{model}", model)
    router.add("GET", "/boom", boom)
    router.add("GET", "/slow", slow)
    async def big(request: Request) -> Response:
        size = int(request.query_string[len("bytes="):]) if request.query_string.startswith("bytes=") else 65536
        return Response(200, b"x" * size, content_type="text/plain")

    router.add("GET", "/stream", stream)
    router.add("GET", "/big", big)
    return router


def run_with_server(test: Callable[[Server, Probe], Awaitable[None]], uvloop: bool = False) -> None:
    async def main() -> None:
        probe = Probe()
        server = await serve(make_router(probe), "127.0.0.1", 0, LIMITS)
        try:
            await asyncio.wait_for(test(server, probe), TIMEOUT)
        finally:
            await server.shutdown(0.5)

    if uvloop:
        pytest.importorskip("uvloop").run(main())
    else:
        asyncio.run(main())


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    """Status, headers, body, and the individual chunks when the body was chunked."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    chunks: list[bytes] = []
    if headers.get("transfer-encoding") == "chunked":
        while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        return status, headers, b"".join(chunks), chunks
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0))), chunks


def error_of(body: bytes) -> dict[str, object]:
    error = msgspec.json.decode(body)["error"]
    assert error["type"] in ("invalid_request_error", "server_error")
    assert error["param"] is None
    return error


async def assert_closed(reader: asyncio.StreamReader) -> None:
    assert await reader.read() == b""


def test_keep_alive_two_requests_one_connection() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        for body in (b"one", b"two"):
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            status, headers, got, _ = await read_response(reader)
            assert status == 200 and "connection" not in headers
            assert msgspec.json.decode(got)["body"] == body.decode()
        writer.close()

    run_with_server(check)


def test_connection_close_and_http10_close() -> None:
    async def check(server: Server, probe: Probe) -> None:
        for request in (b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /echo HTTP/1.0\r\n\r\n"):
            reader, writer = await connect(server)
            writer.write(request)
            status, headers, _, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "close"
            await assert_closed(reader)
            writer.close()

    run_with_server(check)


def test_pipelined_requests_answered_in_order() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"".join(b"GET /v1/models/m%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
        for i in range(3):
            status, _, body, _ = await read_response(reader)
            assert (status, body) == (200, b"m%d" % i)
        writer.close()

    run_with_server(check)


def test_chunked_request_body() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.01)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 200 and msgspec.json.decode(body)["body"] == "hello world"
        writer.close()

    run_with_server(check)


def test_oversized_headers_get_431() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 431 and error_of(body)["code"] == "headers_too_large"
        await assert_closed(reader)
        writer.close()

    run_with_server(check)


def test_oversized_body_gets_413_from_content_length_and_from_chunks() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 413 and error_of(body)["code"] == "body_too_large"
        await assert_closed(reader)
        writer.close()
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"a" * 4096 + b"\r\n1\r\nb\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 413
        writer.close()

    run_with_server(check)


def test_malformed_request_gets_400() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 400 and error_of(body)["code"] == "bad_request"
        await assert_closed(reader)
        writer.close()

    run_with_server(check)


def test_unknown_path_404_and_wrong_method_405() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /nope HTTP/1.1\r\n\r\nDELETE /echo HTTP/1.1\r\n\r\n")
        status, headers, body, _ = await read_response(reader)
        assert status == 404 and headers["content-type"] == "application/json"
        assert error_of(body)["code"] == "not_found"
        status, headers, body, _ = await read_response(reader)
        assert status == 405 and headers["allow"] == "GET, POST"
        assert error_of(body)["code"] == "method_not_allowed"
        writer.close()

    run_with_server(check)


def test_slow_headers_get_408() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        start = asyncio.get_running_loop().time()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 408 and error_of(body)["code"] == "request_timeout"
        assert asyncio.get_running_loop().time() - start < LIMITS.header_timeout_s + 0.5
        await assert_closed(reader)
        writer.close()

    run_with_server(check)


def test_trickled_headers_time_out_too() -> None:
    """Slowloris: a byte now and then does not extend the header deadline."""
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        start = asyncio.get_running_loop().time()

        async def trickle() -> None:
            for byte in b"GET /echo HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(trickle())
        status, _, body, _ = await read_response(reader)
        feeder.cancel()
        assert status == 408 and error_of(body)["code"] == "request_timeout"
        assert asyncio.get_running_loop().time() - start < LIMITS.header_timeout_s + 0.5
        await assert_closed(reader)
        writer.close()

    run_with_server(check)


def test_slow_partial_bodies_time_out() -> None:
    async def check(server: Server, probe: Probe) -> None:
        for chunked in (False, True):
            reader, writer = await connect(server)
            start = asyncio.get_running_loop().time()
            if chunked:
                writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhel")
            else:
                writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nab")
            for _ in range(3):  # trickling more bytes does not extend the deadline
                await asyncio.sleep(0.1)
                writer.write(b"l" if chunked else b"c")
            status, _, body, _ = await read_response(reader)
            elapsed = asyncio.get_running_loop().time() - start
            assert status == 408 and error_of(body)["code"] == "request_timeout"
            assert LIMITS.body_timeout_s - 0.05 < elapsed < LIMITS.body_timeout_s + 0.5
            await assert_closed(reader)
            writer.close()

    run_with_server(check)


def test_body_arriving_in_time_is_answered() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
        await asyncio.sleep(LIMITS.body_timeout_s / 2)
        writer.write(b"cd")
        status, _, body, _ = await read_response(reader)
        assert status == 200 and msgspec.json.decode(body)["body"] == "abcd"
        # The body timer is gone with the request: the connection stays usable after it.
        await asyncio.sleep(LIMITS.body_timeout_s / 2 + 0.05)
        writer.write(b"GET /echo HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()

    run_with_server(check)


def test_idle_keep_alive_connection_closes_quietly() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /echo HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await assert_closed(reader)  # no bytes, just the close after keepalive_timeout_s
        writer.close()

    run_with_server(check)


def test_streaming_response_is_chunked_sse() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /stream HTTP/1.1\r\n\r\n")
        status, headers, _, chunks = await read_response(reader)
        assert status == 200 and headers["content-type"] == "text/event-stream"
        assert chunks == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        assert probe.stream_closed.is_set()
        writer.close()

    run_with_server(check)


def test_client_disconnect_mid_stream_closes_iterator() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /stream?hold=1 HTTP/1.1\r\n\r\n")
        await probe.started.wait()
        writer.close()
        await probe.stream_closed.wait()  # the generator's finally ran without release being set
        assert not probe.release.is_set()

    run_with_server(check)


def test_concurrency_limit_gives_503() -> None:
    async def check(server: Server, probe: Probe) -> None:
        holders = [await connect(server) for _ in range(LIMITS.max_concurrency)]
        for _, writer in holders:
            writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        while server.in_flight < LIMITS.max_concurrency:
            await asyncio.sleep(0.01)
        reader, writer = await connect(server)
        writer.write(b"GET /echo HTTP/1.1\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 503 and error_of(body)["code"] == "server_overloaded"
        probe.release.set()
        for holder_reader, _ in holders:
            assert (await read_response(holder_reader))[0] == 200

    run_with_server(check)


def test_handler_exception_gives_500_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /boom HTTP/1.1\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 500 and error_of(body)["code"] == "internal_error"
        assert b"secret" not in body and b"Traceback" not in body
        writer.close()

    run_with_server(check)
    assert "handler failed" in caplog.text


def test_graceful_shutdown_lets_in_flight_stream_finish() -> None:
    async def main() -> None:
        probe = Probe()
        server = await serve(make_router(probe), "127.0.0.1", 0, LIMITS)
        idle_reader, idle_writer = await connect(server)
        reader, writer = await connect(server)
        writer.write(b"GET /stream?hold=1 HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(probe.started.wait(), TIMEOUT)
        shutdown = asyncio.create_task(server.shutdown(2.0))
        await asyncio.wait_for(assert_closed(idle_reader), TIMEOUT)  # idle one goes at once
        assert not shutdown.done()
        probe.release.set()
        status, _, _, chunks = await asyncio.wait_for(read_response(reader), TIMEOUT)
        assert status == 200 and len(chunks) == 3  # headers went out before the shutdown
        await asyncio.wait_for(shutdown, TIMEOUT)
        await asyncio.wait_for(assert_closed(reader), TIMEOUT)
        idle_writer.close()
        writer.close()

    asyncio.run(main())


def test_a_stream_still_going_at_the_shutdown_deadline_ends_with_an_error_event() -> None:
    # It used to be cut mid-body: a client could not tell a server stopping from a network fault.
    async def main() -> None:
        probe = Probe()
        server = await serve(make_router(probe), "127.0.0.1", 0, LIMITS)
        reader, writer = await connect(server)
        writer.write(b"GET /stream?hold=1 HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(probe.started.wait(), TIMEOUT)
        await asyncio.wait_for(server.shutdown(0.2), TIMEOUT)  # the handler never lets go
        status, _, _, chunks = await asyncio.wait_for(read_response(reader), TIMEOUT)  # whole: its last chunk came
        assert status == 200 and chunks[0] == b"data: 0\n\n"
        assert msgspec.json.decode(chunks[-1][len(b"data: "):])["error"]["code"] == "server_shutting_down"
        assert probe.stream_closed.is_set()  # the handler's generator was closed
        await asyncio.wait_for(assert_closed(reader), TIMEOUT)
        writer.close()

    asyncio.run(main())


def test_keep_alive_stream_and_disconnect_under_uvloop() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /stream HTTP/1.1\r\n\r\n")
        status, _, body, _ = await read_response(reader)
        assert status == 200 and msgspec.json.decode(body)["body"] == "hi"
        assert len((await read_response(reader))[3]) == 3
        probe.stream_closed.clear()
        writer.write(b"GET /stream?hold=1 HTTP/1.1\r\n\r\n")
        await probe.started.wait()
        writer.close()
        await probe.stream_closed.wait()

    run_with_server(check, uvloop=True)


def test_head_is_a_get_without_its_body() -> None:
    # A body after a HEAD's answer would be read as the next answer: the connection would desync.
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models/after HTTP/1.1\r\nHost: x\r\n\r\n")
        for status, framing in ((200, "content-length"), (404, "content-length"), (200, "transfer-encoding")):
            assert (await reader.readuntil(b"\r\n")).split()[1] == b"%d" % status
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            assert framing in head
        status, _, body, _ = await read_response(reader)  # the next answer starts right there
        assert (status, body) == (200, b"after")
        writer.close()

    run_with_server(check)


def test_a_stream_to_an_http10_client_is_not_chunked() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
        raw = await reader.read()  # until the close, which ends the body
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        writer.close()

    run_with_server(check)


@pytest.mark.parametrize("target", [b"http://x:abc/echo", b"http://"])
def test_a_request_target_the_parser_lets_through_but_no_url_parses_is_400(target: bytes) -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        status, headers, body, _ = await read_response(reader)
        assert status == 400 and headers["connection"] == "close" and "request target" in error_of(body)["message"]
        await assert_closed(reader)
        writer.close()

    run_with_server(check)


def test_routes_match_the_path_as_sent_and_parameters_are_decoded() -> None:
    # %2F is not a "/": an encoded path must not reach a route a proxy filters by its plain form.
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        for target, want in ((b"/%65cho", 404), (b"/v1%2Fmodels%2Fm", 404), (b"/v1/models/a%2Fb%20c", 200)):
            writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % target)
            status, _, body, _ = await read_response(reader)
            assert status == want, target
        assert body == b"a/b c"
        writer.close()

    run_with_server(check)


def test_an_upgrade_we_do_not_speak_is_ignored_and_the_body_read() -> None:
    # `curl --http2 -d ...` on http:// asks for h2c: the request is served as HTTP/1.1 (RFC 9110 7.8).
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 11\r\n\r\n")
        writer.write(head + b"hello")
        await asyncio.sleep(0.05)
        writer.write(b" world")  # the body in two pieces
        status, headers, body, _ = await read_response(reader)
        assert status == 200 and msgspec.json.decode(body)["body"] == "hello world"
        assert headers["connection"] == "close"
        await assert_closed(reader)
        writer.close()

    run_with_server(check)


def test_empty_lines_do_not_keep_an_idle_connection_open() -> None:
    # RFC 9112 2.2 lets a server skip CRLFs before a request: they must not re-arm the idle timer.
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        started = asyncio.get_running_loop().time()
        closed = asyncio.ensure_future(reader.read())
        while not closed.done():
            writer.write(b"\r\n")
            await asyncio.sleep(0.05)
        assert closed.result() == b""
        assert asyncio.get_running_loop().time() - started < LIMITS.keepalive_timeout_s + 0.3
        writer.close()

    run_with_server(check)


async def non_reading_client(server: Server) -> asyncio.StreamWriter:
    """A connection whose receive buffer is small, so that what it does not read stays with us."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    return writer


def test_a_client_that_does_not_read_holds_neither_memory_nor_its_socket() -> None:
    # Cheap pipelined requests, big answers, a client that never reads: answering waits at the
    # write buffer's high-water mark instead of holding every answer in memory, and the connection
    # is dropped once the client has read nothing for send_timeout_s.
    async def check(server: Server, probe: Probe) -> None:
        writer = await non_reading_client(server)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 400)
        await asyncio.sleep(LIMITS.send_timeout_s / 2)
        buffered = [c._buffered() for c in server._state.connections]
        assert buffered and max(buffered) <= ServerLimits().write_high_water + 2 * 65536
        await asyncio.sleep(LIMITS.send_timeout_s * 1.5)
        assert not server._state.connections
        writer.close()

    run_with_server(check)


def test_a_whole_answer_nobody_reads_is_dropped_after_the_send_timeout() -> None:
    async def check(server: Server, probe: Probe) -> None:
        writer = await non_reading_client(server)
        writer.write(b"GET /big?bytes=33554432 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.2)
        assert server._state.connections  # closing, its answer still buffered
        await asyncio.sleep(LIMITS.send_timeout_s * 2.5)
        assert not server._state.connections
        writer.close()

    run_with_server(check)


def test_an_http10_client_gets_no_interim_100() -> None:
    async def check(server: Server, probe: Probe) -> None:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")
        status, _, body, _ = await read_response(reader)
        assert status == 200 and msgspec.json.decode(body)["body"] == "hi"
        writer.close()

    run_with_server(check)
