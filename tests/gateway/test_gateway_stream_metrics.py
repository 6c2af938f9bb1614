"""The gateway's inter-token latency histogram and open-connections gauge after known traffic
through instant engine doubles on loopback."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from prometheus_client.parser import text_string_to_metric_families

from gateway.fleet.config import GatewayConfig, ModelEntry, RoutingSection, SecuritySection, TenancySection
from gateway.gateway_server import Gateway
from gateway.http import serve
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import get, post

MODEL = "m"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


@asynccontextmanager
async def gateway_on(engines: list[FakeEngine]) -> AsyncIterator[tuple[Gateway, int]]:
    for engine in engines:
        await engine.start()
    config = GatewayConfig(models=[ModelEntry(name=MODEL, hosts=[e.url for e in engines])],
                           routing=RoutingSection(health_interval_s=0.05),
                           tenancy=TenancySection(enabled=False), security=SecuritySection(enabled=False))
    gateway = Gateway(config)
    await gateway.start()
    server = await serve(gateway.router(), "127.0.0.1", 0, connections=gateway.metrics.connections)
    try:
        yield gateway, server.port
    finally:
        await server.shutdown(1.0)
        await gateway.stop()
        for engine in engines:
            await engine.stop()


async def scrape(port: int) -> Samples:
    text = (await get(port, "/metrics")).content.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def chat(stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


ITL = "llmaas_gateway_inter_token_latency_seconds"


def test_inter_token_gaps_are_observed_per_stream_by_model() -> None:
    async def test() -> None:
        async with gateway_on([FakeEngine("a", tokens=4)]) as (_, port):
            for stream in (True, True, False):
                assert (await post(port, "/v1/chat/completions", chat(stream))).status == 200
            got = await scrape(port)
        # Four content events a stream, three gaps between them; a whole answer has none.
        assert got[(f"{ITL}_count", (("model", MODEL),))] == 6
        assert got[(f"{ITL}_bucket", (("le", "+Inf"), ("model", MODEL)))] == 6
        assert got[("llmaas_gateway_time_to_first_byte_seconds_count", (("model", MODEL),))] == 3
    run(test)


def test_a_stream_cut_short_counts_the_gaps_it_relayed() -> None:
    async def test() -> None:
        async with gateway_on([FakeEngine("a", tokens=5, fail_after=3)]) as (_, port):
            response = await post(port, "/v1/chat/completions", chat(True))
            assert b"upstream_stream_error" in response.content
            got = await scrape(port)
        assert got[(f"{ITL}_count", (("model", MODEL),))] == 2
        assert got[("llmaas_gateway_requests_total", (("code", "upstream_stream_error"), ("model", MODEL),
                                                       ("status", "502"), ("tier", "")))] == 1
    run(test)


async def held_connection(port: int) -> asyncio.StreamWriter:
    """A keep-alive connection that has had one answer (so the server has surely seen it), left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return writer


async def until(condition: Callable[[], bool]) -> None:
    """Waits for the server's loop to process what the test did (a close is seen asynchronously)."""
    while not condition():
        await asyncio.sleep(0.01)


def test_open_connections_gauge_follows_the_clients() -> None:
    async def test() -> None:
        async with gateway_on([FakeEngine("a")]) as (gateway, port):
            held = [await held_connection(port) for _ in range(3)]
            # The three held ones and the scrape's own.
            assert (await scrape(port))[("llmaas_gateway_open_connections", ())] == 4
            for writer in held[:2]:
                writer.close()
            await until(lambda: gateway.metrics.connections.open == 1)
            assert (await scrape(port))[("llmaas_gateway_open_connections", ())] == 2  # one held, the scrape
            held[2].close()
        assert gateway.metrics.connections.open == 0  # shut down: every connection closed
    run(test)
