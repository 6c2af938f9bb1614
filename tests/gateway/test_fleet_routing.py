"""The gateway's request path over several engine hosts (instant doubles on loopback): spreading,
prefix affinity, retries, health, a host dying mid-run, streams, usage, pooled connections. Each
test runs twice: through the Python server alone, and through the native lane in front of it
(gateway/native_lane.py), which must behave the same."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest

from gateway.fleet.config import (GatewayConfig, HostEntry, ModelEntry, RoutingSection, SecuritySection,
                                  TenancySection)
from gateway.fleet.health import probe
from gateway.gateway_server import Gateway
from gateway.http import serve
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import RawResponse, encode_request, get, post, post_and_leave

MODEL = "m"
LANES = ["python", "native"]
_lane = "python"


@pytest.fixture(autouse=True, params=LANES)
def lane(request: pytest.FixtureRequest) -> str:
    """Which server the test's gateway runs: the Python server, or the native lane in front of it."""
    global _lane
    if request.param == "native":
        pytest.importorskip("gateway._native", reason="the native lane is not built")
    _lane = request.param
    return _lane


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


@asynccontextmanager
async def fleet(engines: list[FakeEngine], extra_urls: tuple[str, ...] = (), api_key_env: str | None = None,
                **routing: object) -> AsyncIterator[tuple[Gateway, Client]]:
    for engine in engines:
        await engine.start()
    urls = [e.url for e in engines] + list(extra_urls)
    hosts: list[str | HostEntry] = [HostEntry(url, api_key_env=api_key_env) for url in urls] if api_key_env else urls
    # Routing alone: the tenant stages have their own tests.
    config = GatewayConfig(models=[ModelEntry(name=MODEL, hosts=hosts)],
                           routing=RoutingSection(**{"health_interval_s": 0.05, **routing}),  # type: ignore[arg-type]
                           tenancy=TenancySection(enabled=False), security=SecuritySection(enabled=False))
    gateway = Gateway(config)
    await gateway.start()
    factory, why = gateway.native_lane() if _lane == "native" else (None, "")
    assert _lane == "python" or factory is not None, why
    server = await serve(gateway.router(), "127.0.0.1", 0, lane=factory)
    try:
        yield gateway, Client(server.port)
    finally:
        await server.shutdown(1.0)
        await gateway.stop()
        for engine in engines:
            await engine.stop()


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    async def post(self, path: str, json: dict | None = None, content: bytes | None = None) -> RawResponse:
        return await post(self.port, path, content if content is not None else json)  # type: ignore[arg-type]


def chat(content: str = "hi", stream: bool = False, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}


async def stream_events(client: Client, body: dict) -> list[bytes]:
    """The data of each event of a streamed answer."""
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    return response.events()


def served_by(events: list[bytes]) -> str:
    return msgspec.json.decode(events[0])["choices"][0]["delta"]["content"]


def test_answer_and_usage_pass_through() -> None:
    async def test() -> None:
        async with fleet([FakeEngine("a")]) as (_, client):
            response = await client.post("/v1/chat/completions", json=chat())
            assert response.status == 200
            body = response.json()
            assert body["choices"][0]["message"]["content"] == "a"
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 1
    run(test)


def test_usage_chunk_reaches_only_clients_that_ask() -> None:
    async def test() -> None:
        engine = FakeEngine("a")
        async with fleet([engine]) as (_, client):
            plain = await stream_events(client, chat(stream=True))
            asked = await stream_events(client, chat(stream=True, stream_options={"include_usage": True}))
        # The engine was asked for usage both times (the gateway accounts with it)...
        assert all(r["stream_options"]["include_usage"] for r in engine.requests)
        # ...and the client that did not ask never sees it.
        assert not any(b'"usage"' in e for e in plain) and plain[-1] == b"[DONE]"
        assert b'"usage":{' in asked[-2] and asked[-1] == b"[DONE]"
    run(test)


def test_concurrent_requests_spread_evenly_by_outstanding_tokens() -> None:
    async def test() -> None:
        engines = [FakeEngine(name, tokens=8, delay_s=0.02) for name in "abc"]
        async with fleet(engines) as (_, client):
            results = await asyncio.gather(*(stream_events(client, chat(f"q{i}", stream=True)) for i in range(30)))
        assert Counter(served_by(events) for events in results) == {"a": 10, "b": 10, "c": 10}
    run(test)


def test_a_shared_long_prefix_sticks_to_one_host() -> None:
    async def test() -> None:
        engines = [FakeEngine(name) for name in "abc"]
        system = "You are a meticulous assistant. " * 20  # > affinity_min_chars
        async with fleet(engines, affinity_min_chars=256) as (_, client):
            # Short prompts carry no key: they spread.
            short = [(await client.post("/v1/chat/completions", json=chat(f"q{i}"))).json() for i in range(6)]
            assert Counter(s["choices"][0]["message"]["content"] for s in short) == {"a": 2, "b": 2, "c": 2}
            hosts = set()
            for i in range(9):
                body = {"model": MODEL, "messages": [{"role": "system", "content": system},
                                                     {"role": "user", "content": f"question {i}"}]}
                hosts.add((await client.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]["content"])
            assert len(hosts) == 1
    run(test)


def test_unreachable_host_is_skipped_then_taken_out() -> None:
    async def test() -> None:
        # Port 9 on loopback: nothing listens, connections are refused at once.
        async with fleet([FakeEngine("a")], extra_urls=("http://127.0.0.1:9",)) as (gateway, client):
            for i in range(6):
                response = await client.post("/v1/chat/completions", json=chat(f"q{i}"))
                assert response.status == 200 and response.json()["choices"][0]["message"]["content"] == "a"
            assert not gateway.fleet.hosts["http://127.0.0.1:9"].healthy
    run(test)


def test_an_overloaded_engine_is_retried_on_another() -> None:
    async def test() -> None:
        busy, ok = FakeEngine("busy", status=503), FakeEngine("ok")
        async with fleet([busy, ok]) as (_, client):
            for i in range(4):
                response = await client.post("/v1/chat/completions", json=chat(f"q{i}", stream=i % 2 == 1))
                assert response.status == 200 and b"ok" in response.content
            assert busy.requests, "the busy host was tried"
    run(test)


def test_no_host_left_is_a_clear_503() -> None:
    async def test() -> None:
        async with fleet([FakeEngine("busy", status=503)], health_interval_s=2.5) as (_, client):
            response = await client.post("/v1/chat/completions", json=chat())
        assert response.status == 503
        assert response.json()["error"]["code"] == "engine_unavailable"
        assert response.headers["retry-after"] == "3"  # when the next probe may have brought a host back
    run(test)


def test_engines_that_want_a_key_get_it_with_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ENGINE_KEY", "engine-secret")

    async def test() -> None:
        a, b = FakeEngine("a", api_key="engine-secret"), FakeEngine("b", api_key="engine-secret")
        async with fleet([a, b], api_key_env="TEST_ENGINE_KEY") as (gateway, client):
            for i in range(4):
                response = await client.post("/v1/chat/completions", json=chat(f"q{i}", stream=i % 2 == 1))
                assert response.status == 200
            await asyncio.sleep(0.2)  # health probes carry it too
            assert all(h.healthy for h in gateway.fleet.hosts.values())
            a.delay_s = b.delay_s = 0.3  # a whole answer a client leaves: the abort carries it too
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(encode_request("POST", "/v1/chat/completions", json.dumps(chat("bye")).encode()))
            await asyncio.sleep(0.2)
            writer.transport.abort()
            for _ in range(50):
                if a.aborts or b.aborts:
                    break
                await asyncio.sleep(0.05)
        assert a.aborts or b.aborts
        assert a.unauthorized == b.unauthorized == 0 and a.requests and b.requests
    run(test)


def test_no_host_left_tries_each_host_once() -> None:
    # The native lane answers this 503 itself: handed over, the Python path would try them all again.
    async def test() -> None:
        a, b = FakeEngine("a", status=503), FakeEngine("b", status=503)
        async with fleet([a, b], max_attempts=3) as (_, client):
            response = await client.post("/v1/chat/completions", json=chat())
        assert response.status == 503 and response.json()["error"]["code"] == "engine_unavailable"
        assert "answered 503" in response.json()["error"]["message"]
        assert (len(a.requests), len(b.requests)) == (1, 1)
    run(test)


def test_a_host_that_does_not_answer_in_time_is_asked_once() -> None:
    # A first-byte timeout on a pooled connection is the host's failure, not a stale connection to
    # retry on a fresh one: the host would run the request twice, the client wait twice as long.
    async def test() -> None:
        slow, ok = FakeEngine("slow", tokens=1), FakeEngine("ok", tokens=1)
        async with fleet([slow, ok], first_byte_timeout_s=0.5, failure_threshold=100) as (_, client):
            for i in range(4):  # pooled connections to both
                assert (await client.post("/v1/chat/completions", json=chat(f"warm{i}"))).status == 200
            assert slow.requests and ok.requests
            slow.delay_s = 30.0
            loop = asyncio.get_running_loop()
            for i in range(4):
                started = loop.time()
                response = await client.post("/v1/chat/completions", json=chat(f"q{i}"))
                assert response.status == 200 and response.json()["choices"][0]["message"]["content"] == "ok"
                assert loop.time() - started < 0.9
            asked = [r["messages"][0]["content"] for r in slow.requests]
            assert len(asked) == len(set(asked))
    run(test)


def test_a_stream_that_sends_no_event_in_time_goes_to_another_host() -> None:
    async def test() -> None:
        stuck, ok = FakeEngine("stuck", stall_after=0), FakeEngine("ok")
        async with fleet([stuck, ok], first_byte_timeout_s=0.5) as (_, client):
            for i in range(3):
                events = await stream_events(client, chat(f"q{i}", stream=True))
                assert events[-1] == b"[DONE]" and b'"ok"' in events[0]
            assert stuck.requests, "the stuck host was tried"
    run(test)


def test_a_stream_that_stalls_midway_ends_with_an_error_event() -> None:
    async def test() -> None:
        async with fleet([FakeEngine("a", tokens=5, stall_after=2)], first_byte_timeout_s=0.5) as (_, client):
            events = await stream_events(client, chat(stream=True))
        assert b"upstream_stream_error" in events[-1] and b"[DONE]" not in events
    run(test)


def test_a_host_answering_500_leaves_the_rotation() -> None:
    # It answers fastest, so least-loaded routing would send it most requests, all failing.
    async def test() -> None:
        bad, ok = FakeEngine("bad", status=500), FakeEngine("ok", delay_s=0.01)
        async with fleet([bad, ok], failure_threshold=2, health_interval_s=30.0) as (gateway, client):
            statuses = [(await client.post("/v1/chat/completions", json=chat(f"q{i}"))).status for i in range(10)]
            assert statuses.count(500) == 2 and statuses[-6:] == [200] * 6
            assert not gateway.fleet.hosts[bad.url].healthy
    run(test)


def test_a_host_failing_fast_under_concurrent_load_leaves_at_once() -> None:
    # The lane takes the host out itself at the threshold: Python's breaker hears of it only at its
    # next tick, by which time a host failing in microseconds would have drawn dozens of requests.
    async def test() -> None:
        bad, ok = FakeEngine("bad", status=500), FakeEngine("ok", delay_s=0.005)
        async with fleet([bad, ok], failure_threshold=2, health_interval_s=30.0) as (_, client):
            async def worker(w: int) -> list[int]:
                return [(await client.post("/v1/chat/completions", json=chat(f"w{w}q{i}"))).status for i in range(10)]

            statuses = [s for batch in await asyncio.gather(*(worker(w) for w in range(4))) for s in batch]
        assert statuses.count(500) <= 2 + 4  # the threshold, and what was in flight when it tripped
    run(test)


def test_a_200_that_is_not_a_completion_is_served_by_another_host() -> None:
    async def test() -> None:
        html, ok = FakeEngine("html", page=b"<html>maintenance</html>"), FakeEngine("ok")
        async with fleet([html, ok], failure_threshold=100) as (_, client):
            for i in range(4):
                response = await client.post("/v1/chat/completions", json=chat(f"q{i}"))
                assert response.status == 200 and response.json()["choices"][0]["message"]["content"] == "ok"
            assert html.requests, "the broken host was tried"
    run(test)


def test_a_frozen_probe_does_not_hold_back_another_hosts_return() -> None:
    async def test() -> None:
        frozen, ok = FakeEngine("frozen", load_delay_s=30.0), FakeEngine("ok")
        async with fleet([frozen, ok], health_interval_s=0.05, health_timeout_s=2.0) as (gateway, _):
            await asyncio.sleep(0.2)  # the frozen host's probe is under way
            host = gateway.fleet.hosts[ok.url]
            host.healthy = False
            await asyncio.sleep(0.5)
            assert host.healthy
    run(test)


def test_failure_mid_stream_ends_with_an_error_event() -> None:
    async def test() -> None:
        async with fleet([FakeEngine("a", tokens=5, fail_after=2)]) as (_, client):
            events = await stream_events(client, chat(stream=True))
        assert served_by(events) == "a" and b"[DONE]" not in events
        assert msgspec.json.decode(events[-1])["error"]["code"] == "upstream_stream_error"
    run(test)


def test_a_host_killed_mid_run_loses_no_request() -> None:
    async def test() -> None:
        doomed, survivor = FakeEngine("doomed", tokens=20, delay_s=0.02), FakeEngine("survivor", tokens=20, delay_s=0.02)
        async with fleet([doomed, survivor]) as (gateway, client):
            running = [asyncio.create_task(stream_events(client, chat(f"q{i}", stream=True))) for i in range(10)]
            await asyncio.sleep(0.15)
            assert doomed.server is not None
            for conn in list(doomed.server._state.connections):
                conn.abort()
            await doomed.stop()
            first_wave = await asyncio.gather(*running)
            after = [await stream_events(client, chat(f"r{i}", stream=True)) for i in range(6)]
            assert not gateway.fleet.hosts[doomed.url].healthy
        for events in first_wave:  # each one either finished or says it was cut
            last = events[-1]
            assert last == b"[DONE]" or msgspec.json.decode(last)["error"]["code"] == "upstream_stream_error"
        assert sum(events[-1] != b"[DONE]" for events in first_wave) >= 1  # the doomed host's streams
        assert all(served_by(events) == "survivor" and events[-1] == b"[DONE]" for events in after)
    run(test)


def test_client_leaving_mid_stream_aborts_the_engine_request() -> None:
    async def test() -> None:
        engine = FakeEngine("a", tokens=200, delay_s=0.01)
        async with fleet([engine]) as (gateway, client):
            assert await post_and_leave(client.port, "/v1/chat/completions", chat(stream=True))
            for _ in range(200):
                if engine.aborted:
                    break
                await asyncio.sleep(0.01)
            assert engine.aborted == 1
            assert gateway.fleet.hosts[engine.url].in_flight == 0
            assert gateway.fleet.hosts[engine.url].outstanding_tokens == 0
    run(test)


def test_connections_to_an_engine_are_reused() -> None:
    async def test() -> None:
        engine = FakeEngine("a")
        async with fleet([engine], health_interval_s=60.0) as (_, client):
            for i in range(20):
                await client.post("/v1/chat/completions", json=chat(f"q{i}", stream=i % 2 == 0))
            # One pool per path: the native lane keeps its own for the requests it serves.
            assert engine.accepted == (1 if _lane == "python" else 2)
    run(test)


def test_a_host_failing_its_probe_leaves_and_comes_back() -> None:
    async def test() -> None:
        flaky, steady = FakeEngine("flaky"), FakeEngine("steady")
        async with fleet([flaky, steady]) as (gateway, client):
            flaky.load_status = 500
            await asyncio.sleep(0.2)
            assert not gateway.fleet.hosts[flaky.url].healthy
            answers = {(await client.post("/v1/chat/completions", json=chat(f"q{i}"))).json()["choices"][0]["message"]["content"]
                       for i in range(4)}
            assert answers == {"steady"}
            flaky.load_status = 200
            await asyncio.sleep(0.2)
            assert gateway.fleet.hosts[flaky.url].healthy
    run(test)


def test_one_slow_probe_is_forgiven_a_repeated_one_is_not() -> None:
    async def test() -> None:
        slow = FakeEngine("slow")
        async with fleet([slow], health_interval_s=3600, health_timeout_s=0.05) as (gateway, _):
            host = gateway.fleet.hosts[slow.url]
            slow.load_delay_s = 0.2
            await probe(host, 0.05)
            assert host.healthy
            await probe(host, 0.05)
            assert not host.healthy
            slow.load_delay_s = 0.0
            await probe(host, 0.05)
            assert host.healthy
    run(test)


@pytest.mark.parametrize("body, status, code", [
    (b'{"model": "nope", "messages": []}', 404, "model_not_found"),
    (b'{"model": ', 400, None),
    (b'{"model": 3, "messages": []}', 400, None),
])
def test_refusals_before_routing(body: bytes, status: int, code: str | None) -> None:
    async def test() -> None:
        engine = FakeEngine("a")
        async with fleet([engine]) as (_, client):
            response = await client.post("/v1/chat/completions", content=body)
        assert response.status == status
        assert response.json()["error"]["code"] == code
        assert not engine.requests
    run(test)


def test_metrics_count_requests_tokens_retries_and_hosts() -> None:
    async def test() -> None:
        busy, ok = FakeEngine("busy", status=503), FakeEngine("ok", tokens=4)
        async with fleet([busy, ok]) as (_, client):
            for i in range(3):
                assert (await client.post("/v1/chat/completions", json=chat(f"q{i}", stream=i == 2))).status == 200
            text = (await get(client.port, "/metrics")).content.decode()
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line and not line.startswith("#")}
        assert samples['llmaas_gateway_requests_total{code="",model="m",status="200",tier=""}'] == 3
        assert samples['llmaas_gateway_tokens_total{kind="completion",model="m"}'] == 12
        assert samples['llmaas_gateway_tokens_total{kind="cached_prompt",model="m"}'] == 3
        # Each request tried the busy host first or second; those tried first count a retry.
        assert samples['llmaas_gateway_retries_total{model="m"}'] == len(busy.requests)
        assert samples['llmaas_gateway_request_duration_seconds_count{model="m"}'] == 3
        assert samples[f'llmaas_gateway_host_up{{host="{ok.url}"}}'] == 1
        assert samples[f'llmaas_gateway_host_in_flight{{host="{ok.url}"}}'] == 0
    run(test)
