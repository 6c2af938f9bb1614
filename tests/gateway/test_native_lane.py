"""The gateway's native lane (gateway/native_lane.py, csrc/gateway): what it answers itself must be
byte for byte what the Python server answers; what it does not serve it hands over, bytes and all,
to the Python server; it counts what it served in the same metrics.

Most tests run one gateway on each server in front of the same engine doubles and compare the raw
bytes of their answers. The routing behaviours (spreading, affinity, retries, dead hosts) run on
both servers in test_fleet_routing.py.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.fleet.config import GatewayConfig, ModelEntry, RoutingSection, SecuritySection, TenancySection
from gateway.fleet.metrics import observe_many
from gateway.gateway_server import Gateway
from gateway.http import ServerLimits, serve
from gateway.http.app import Request, Response, Router, StreamingResponse
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import get, parse_response

pytest.importorskip("gateway._native", reason="the native lane is not built")

MODEL = "m"


def run(test) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(test(), 60))


def _config(urls: list[str]) -> GatewayConfig:
    return GatewayConfig(models=[ModelEntry(name=MODEL, hosts=urls)], routing=RoutingSection(health_interval_s=0.05),
                         tenancy=TenancySection(enabled=False), security=SecuritySection(enabled=False))


@asynccontextmanager
async def gateways(urls: list[str], limits: ServerLimits | None = None
                   ) -> AsyncIterator[tuple[int, int, Gateway]]:
    """The same fleet behind two gateways: (Python server's port, native lane's port, the lane's gateway)."""
    python, native = Gateway(_config(urls)), Gateway(_config(urls))
    await python.start()
    await native.start()
    factory, why = native.native_lane()
    assert factory is not None, why
    servers = [await serve(python.router(), "127.0.0.1", 0, limits),
               await serve(native.router(), "127.0.0.1", 0, limits, connections=native.metrics.connections,
                           lane=factory)]
    try:
        yield servers[0].port, servers[1].port, native
    finally:
        for server in servers:
            await server.shutdown(1.0)
        await python.stop()
        await native.stop()


@asynccontextmanager
async def engines(*doubles: FakeEngine) -> AsyncIterator[list[str]]:
    for engine in doubles:
        await engine.start()
    try:
        yield [engine.url for engine in doubles]
    finally:
        for engine in doubles:
            await engine.stop()


async def exchange(port: int, data: bytes, timeout_s: float = 10) -> bytes:
    """Sends raw bytes; returns every byte answered until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


def request(body: bytes | dict, path: str = "/v1/chat/completions", close: bool = True, method: str = "POST",
            extra: str = "") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{extra}"
    if close:
        head += "connection: close\r\n"
    return (head + f"content-length: {len(data)}\r\n\r\n").encode() + data


def chat(content: str = "hi", **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def same_answer(python: int, native: int, data: bytes) -> bytes:
    a, b = await exchange(python, data), await exchange(native, data)
    assert a == b
    return b


def test_whole_answers_are_byte_identical() -> None:
    async def test() -> None:
        async with engines(FakeEngine("a")) as urls, gateways(urls) as (python, native, _):
            answer = await same_answer(python, native, request(chat()))
            assert answer.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ")
            assert b"connection: close\r\n" in answer
            await same_answer(python, native, request({"model": MODEL, "prompt": "Once upon"}, "/v1/completions"))
            # The engine's own refusal is relayed as it is.
            await same_answer(python, native, request(chat(max_tokens="x")))
    run(test)


def test_engine_errors_are_relayed() -> None:
    async def test() -> None:
        async with engines(FakeEngine("a", status=400)) as urls, gateways(urls) as (python, native, _):
            answer = await same_answer(python, native, request(chat()))
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    run(test)


@pytest.mark.parametrize("body", [
    b"{not json", b"[1]", b'{"model": 5, "messages": []}', b'{"messages": []}',
    json.dumps(chat(stream=True)).encode(), json.dumps({"model": "nope", "prompt": "x"}).encode(),
    json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}).encode(),
    json.dumps(chat(max_tokens=2**62, n=4)).encode(),  # an estimate beyond int64: Python's integers
    json.dumps(chat(stream=None, n=None, max_tokens=None)).encode(),  # null: not given, as OpenAI declares
])
def test_what_the_lane_does_not_serve_the_python_server_answers(body: bytes) -> None:
    async def test() -> None:
        async with engines(FakeEngine("a")) as urls, gateways(urls) as (python, native, _):
            answer = await exchange(native, request(body))
            expected = await exchange(python, request(body))
            if b"stream" in body:  # streamed answers carry ids and times of their own: compare events
                assert parse_response(answer).events()[1:] == parse_response(expected).events()[1:]
            else:
                assert answer == expected
    run(test)


def test_one_connection_mixes_lane_and_python_answers_in_order() -> None:
    async def test() -> None:
        async with engines(FakeEngine("a")) as urls, gateways(urls) as (python, native, _):
            # Pipelined in one write: two the lane serves, then a stream and a GET it hands over.
            data = (request(chat("1"), close=False) + request(chat("2"), close=False)
                    + request(chat("3", stream=True), close=False) + request(b"", "/v1/models", method="GET"))
            answers = await exchange(native, data)
            assert answers.count(b"HTTP/1.1 200 OK") == 4
            assert answers.index(b'"content":"a"') < answers.index(b"text/event-stream") < answers.index(b'"object":"list"')
            assert answers.endswith(b"}")  # the GET's JSON, last, then the close
    run(test)


def test_keep_alive_requests_are_served_one_after_another() -> None:
    async def test() -> None:
        async with engines(FakeEngine("a")) as urls, gateways(urls) as (_, native, _gateway):
            reader, writer = await asyncio.open_connection("127.0.0.1", native)
            for i in range(5):
                writer.write(request(chat(str(i)), close=False))
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                body = json.loads(await reader.readexactly(length))
                assert body["choices"][0]["message"]["content"] == "a"
            writer.close()
    run(test)


def test_slow_requests_and_overload_get_the_python_servers_answers() -> None:
    async def test() -> None:
        slow = ServerLimits(header_timeout_s=0.2, body_timeout_s=0.2)
        async with engines(FakeEngine("a")) as urls, gateways(urls, slow) as (python, native, _):
            partial = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\n"
            assert (await exchange(native, partial)) == (await exchange(python, partial))
            assert (await exchange(native, partial)).startswith(b"HTTP/1.1 408 ")
            half_body = request(chat())[:-5]
            assert (await exchange(native, half_body)) == (await exchange(python, half_body))
        async with engines(FakeEngine("a")) as urls, gateways(urls, ServerLimits(max_concurrency=0)) as (python, native, _):
            answer = await same_answer(python, native, request(chat()))
            assert answer.startswith(b"HTTP/1.1 503 ")
    run(test)


def test_a_host_name_that_does_not_resolve_keeps_the_lane_off_not_the_gateway() -> None:
    async def test() -> None:
        async with engines(FakeEngine("ok")) as urls:
            gateway = Gateway(_config(["http://engine-that-does-not-resolve.invalid:9000", *urls]))
            await gateway.start()
            try:
                factory, why = gateway.native_lane()
                assert factory is None and "does not resolve" in why
            finally:
                await gateway.stop()
    run(test)


def test_a_host_down_is_retried_then_no_host_left_is_the_python_503() -> None:
    async def test() -> None:
        async with engines(FakeEngine("ok")) as urls:
            async with gateways(["http://127.0.0.1:9", *urls]) as (_, native, gateway):
                for i in range(4):
                    answer = parse_response(await exchange(native, request(chat(str(i)))))
                    assert answer.status == 200 and answer.json()["choices"][0]["message"]["content"] == "ok"
        async with gateways(["http://127.0.0.1:9"]) as (python, native, _):
            answer = await exchange(native, request(chat()))
            assert answer == await exchange(python, request(chat()))
            assert parse_response(answer).json()["error"]["code"] == "engine_unavailable"
    run(test)


def test_metrics_count_the_lanes_requests() -> None:
    async def test() -> None:
        async with engines(FakeEngine("a", delay_s=0.1, tokens=2)) as urls, gateways(urls) as (_, native, gateway):
            for _ in range(3):
                await exchange(native, request(chat()))
            # A client that leaves before its answer: billed what the engine produced (499).
            reader, writer = await asyncio.open_connection("127.0.0.1", native)
            writer.write(request(chat()))
            await asyncio.sleep(0.05)
            writer.transport.abort()
            await asyncio.sleep(0.4)
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", native)  # an open one, counted
            text = (await get(native, "/metrics")).content.decode()
            writer2.close()
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line and not line.startswith("#")}
        assert samples[f'llmaas_gateway_requests_total{{code="",model="{MODEL}",status="200",tier=""}}'] == 3
        assert samples[f'llmaas_gateway_requests_total{{code="",model="{MODEL}",status="499",tier=""}}'] == 1
        assert samples[f'llmaas_gateway_tokens_total{{kind="completion",model="{MODEL}"}}'] == 8
        assert samples[f'llmaas_gateway_request_duration_seconds_count{{model="{MODEL}"}}'] == 4
        assert samples[f'llmaas_gateway_request_duration_seconds_bucket{{le="0.1",model="{MODEL}"}}'] == 0
        assert samples["llmaas_gateway_open_connections"] >= 2  # the scrape's own and the idle one
        assert samples[f'llmaas_gateway_host_in_flight{{host="{urls[0]}"}}'] == 0
        assert gateway.recorder.window(120, MODEL)[MODEL].requests == 4  # this minute and the last
    run(test)


def test_shutdown_lets_an_answer_in_progress_finish() -> None:
    async def test() -> None:
        async with engines(FakeEngine("a", delay_s=0.2, tokens=1)) as urls:
            gateway = Gateway(_config(urls))
            await gateway.start()
            factory, _ = gateway.native_lane()
            server = await serve(gateway.router(), "127.0.0.1", 0, lane=factory)
            pending = asyncio.ensure_future(exchange(server.port, request(chat())))
            await asyncio.sleep(0.05)
            await server.shutdown(5.0)
            assert parse_response(await pending).status == 200
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", server.port)
            await gateway.stop()
    run(test)


def test_a_stream_past_the_shutdown_deadline_ends_with_an_error_event() -> None:
    # A stream the lane handed to the Python server, still going when the deadline passes.
    async def test() -> None:
        async with engines(FakeEngine("a", stall_after=1)) as urls:
            gateway = Gateway(_config(urls))
            await gateway.start()
            factory, _ = gateway.native_lane()
            server = await serve(gateway.router(), "127.0.0.1", 0, lane=factory)
            pending = asyncio.ensure_future(exchange(server.port, request(chat(stream=True))))
            await asyncio.sleep(0.2)
            await server.shutdown(0.2)
            answer = parse_response(await pending)  # a whole chunked body: its last chunk came
            events = [e for e in answer.content.split(b"\n\n") if e]
            assert answer.status == 200 and b'"content":"a"' in events[0]
            assert json.loads(events[-1][len(b"data: "):])["error"]["code"] == "server_shutting_down"
            await gateway.stop()
    run(test)


def test_chunked_engine_answers_are_relayed_whole() -> None:
    async def test() -> None:
        async def as_chunks(_: Request) -> StreamingResponse:
            async def parts() -> AsyncIterator[bytes]:
                yield b'{"choices":[],'
                yield b'"usage":{"prompt_tokens":2,"completion_tokens":3}}'
            return StreamingResponse(parts(), content_type="application/json")

        router = Router()
        router.add("POST", "/v1/chat/completions", as_chunks)
        router.add("GET", "/internal/load", lambda r: _load())
        engine = await serve(router, "127.0.0.1", 0)
        async with gateways([f"http://127.0.0.1:{engine.port}"]) as (python, native, _):
            answer = await same_answer(python, native, request(chat()))
            assert answer.endswith(b'{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}')
        await engine.shutdown(1.0)
    run(test)


async def _load() -> Response:
    return Response(body=b'{"num_running":0,"num_waiting":0,"kv_cache_usage":0.0,"num_free_blocks":1,'
                         b'"num_blocks":1,"block_size":16,"num_pending_tokens":0}')


def test_observe_many_equals_observe_one_by_one() -> None:
    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 2.5, 99.0, 1e9, 0.1 + 0.2]
    exposition = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        child = Histogram("h", "h", ["model"], buckets=(0.005, 0.1, 0.3, 2.5, 60.0), registry=registry).labels("m")
        if bulk:
            observe_many(child, values)
        else:
            for v in values:
                child.observe(v)
        exposition.append([line for line in generate_latest(registry).decode().splitlines() if "created" not in line])
    assert exposition[0] == exposition[1]


def test_the_lane_serves_only_gateways_without_request_stages() -> None:
    from gateway.fleet.fleet import Fleet
    from gateway.native_lane import unavailable

    base = _config(["http://127.0.0.1:9"])
    assert unavailable(base, Fleet(base)) is None
    security = msgspec.structs.replace(base, security=SecuritySection(enabled=True))
    assert "prompt-security stage" in (unavailable(security, Fleet(security)) or "")
    off = msgspec.structs.replace(base, server=msgspec.structs.replace(base.server, native_lane=False))
    assert "native_lane = false" in (unavailable(off, Fleet(off)) or "")
    tls = msgspec.structs.replace(base, server=msgspec.structs.replace(base.server, certfile="c", keyfile="k"))
    assert "TLS" in (unavailable(tls, Fleet(tls)) or "")


def test_oversized_requests_get_the_python_servers_answers() -> None:
    async def test() -> None:
        small = ServerLimits(max_header_bytes=1024, max_body_bytes=200)
        async with engines(FakeEngine("a")) as urls, gateways(urls, small) as (python, native, _):
            big_body = request(chat("x" * 300))
            assert (await same_answer(python, native, big_body)).startswith(b"HTTP/1.1 413 ")
            big_head = request(chat(), extra=f"x-pad: {'p' * 2000}\r\n")
            assert (await same_answer(python, native, big_head)).startswith(b"HTTP/1.1 431 ")
    run(test)


def test_garbage_never_breaks_the_lane() -> None:
    async def test() -> None:
        import random

        rng = random.Random(7)
        good = request(chat())
        samples = [good[:n] for n in range(0, len(good), 7)]
        for _ in range(150):
            mutated = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            samples.append(bytes(mutated))
        samples += [rng.randbytes(rng.randint(1, 400)) for _ in range(50)]
        limits = ServerLimits(header_timeout_s=0.3, body_timeout_s=0.3)
        async with engines(FakeEngine("a")) as urls, gateways(urls, limits) as (_, native, _gateway):
            answers = await asyncio.gather(*(exchange(native, s, timeout_s=20) for s in samples))
            for sample, answer in zip(samples, answers):
                assert answer == b"" or answer.startswith(b"HTTP/1.1 "), (sample, answer)
            assert parse_response(await exchange(native, good)).status == 200
    run(test)


def test_what_cannot_begin_a_served_request_is_answered_at_once() -> None:
    # A TLS handshake on the plain port, a stray line: the Python server's 400, without the lane
    # first waiting out the header timeout for a head that never comes.
    async def test() -> None:
        limits = ServerLimits(header_timeout_s=30.0)
        async with engines(FakeEngine("a")) as urls, gateways(urls, limits) as (python, native, _gateway):
            bare_lf = b"POST /v1/chat/completions HTTP/1.1\nhost: t\ncontent-length: 2\n\n{}"
            for sample in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), b"hello\r\n", bare_lf):
                a, b = await exchange(python, sample, timeout_s=2), await exchange(native, sample, timeout_s=2)
                assert a == b and b.startswith(b"HTTP/1.1 400 "), (sample, b)
    run(test)


def test_an_answer_nobody_reads_is_dropped_after_the_send_timeout() -> None:
    # A client that never reads its (here 16 MB, past any socket buffer) answer holds neither the socket nor the memory.
    async def test() -> None:
        limits = ServerLimits(send_timeout_s=0.5)
        async with engines(FakeEngine("x" * 16 * 2**20)) as urls, gateways(urls, limits) as (_, native, gateway):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", native))
            sock.sendall(request(chat(), close=False))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while gateway.metrics.connections.total() == 0 and loop.time() < deadline:
                await asyncio.sleep(0.05)
            while gateway.metrics.connections.total() > 0 and loop.time() < deadline:
                await asyncio.sleep(0.1)
            assert gateway.metrics.connections.total() == 0
            sock.close()
    run(test)


def test_a_client_leaving_a_whole_answer_asks_the_engine_to_stop_it() -> None:
    # Both servers tag each whole answer (a random name, a new one per request) and, when the
    # client leaves while it is out, ask the engine to stop it by that name.
    async def test() -> None:
        engine = FakeEngine("slow", delay_s=0.1, tokens=5)
        async with engines(engine) as urls, gateways(urls) as (python, native, _gateway):
            for port in (python, native):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request(chat()))
                for _ in range(200):
                    if len(engine.abort_tags) > len(engine.aborts):
                        break
                    await asyncio.sleep(0.01)
                writer.transport.abort()
                for _ in range(200):
                    if len(engine.aborts) == len(engine.abort_tags):
                        break
                    await asyncio.sleep(0.01)
                assert engine.aborts == engine.abort_tags, port
            assert len(set(engine.abort_tags)) == 2 and all(len(t) >= 24 for t in engine.abort_tags)
            # A client that stays gets its answer, and no abort is sent.
            assert parse_response(await exchange(native, request(chat()))).status == 200
            assert len(engine.aborts) == 2
    run(test)


def test_whole_answers_survive_an_engine_dying_under_them() -> None:
    async def test() -> None:
        dying, survivor = FakeEngine("dying", delay_s=0.2, tokens=1), FakeEngine("ok")
        async with engines(dying, survivor) as urls, gateways(urls) as (_, native, gateway):
            pending = [asyncio.ensure_future(exchange(native, request(chat(str(i))))) for i in range(8)]
            await asyncio.sleep(0.1)  # every request is out, some on the host about to die
            assert dying.server is not None
            for conn in list(dying.server._state.connections):
                conn.abort()
            await dying.stop()
            answers = [parse_response(a) for a in await asyncio.gather(*pending)]
            assert [a.status for a in answers] == [200] * 8
            # Those that were on the dying host went again, to the survivor, before any byte was sent.
            assert dying.requests and {a.json()["choices"][0]["message"]["content"] for a in answers} == {"ok"}
            await asyncio.sleep(0.1)  # the lane's failures reach the breaker at its next sync
            assert gateway.fleet.hosts[urls[0]].consecutive_failures > 0 or not gateway.fleet.hosts[urls[0]].healthy
    run(test)


def test_the_lane_follows_a_host_name_to_its_new_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lane connects by address. It resolved each host's name once, at start: an engine behind a
    # name that moved (a Kubernetes service, a DNS failover) stayed out of the lane's reach (503s)
    # until the gateway restarted, while the Python server, which resolves at each connect, followed.
    from gateway import native_lane

    monkeypatch.setattr(native_lane, "RESOLVE_S", 0.1)
    address = {"engine.test": "127.0.0.1"}
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *args, **kwargs: real(address.get(host, host), *args, **kwargs))

    async def test() -> None:
        first = FakeEngine("first")
        await first.start()
        second = FakeEngine("second", host="127.0.0.2", port=first.port)  # the same port, elsewhere
        await second.start()
        try:
            async with gateways([f"http://engine.test:{first.port}"]) as (_, native, gateway):
                served = parse_response(await exchange(native, request(chat())))
                assert served.json()["choices"][0]["message"]["content"] == "first"
                await first.stop()
                address["engine.test"] = "127.0.0.2"
                deadline = time.monotonic() + 10
                while True:
                    answer = parse_response(await exchange(native, request(chat())))
                    if answer.status == 200:
                        break
                    assert time.monotonic() < deadline, answer.status
                    await asyncio.sleep(0.05)
                assert answer.json()["choices"][0]["message"]["content"] == "second"
                assert gateway.lane.handed_off == 0  # type: ignore[union-attr]  # served by the lane itself
        finally:
            await second.stop()
    run(test)
