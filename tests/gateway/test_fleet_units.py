"""The gateway's routing pieces alone: config file, host choice, SSE framing, prefix keys."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.fleet.balancer import pick_host, prefix_key
from gateway.fleet.config import ConfigError, parse_config
from gateway.fleet.host import HostState
from gateway.fleet.sse import event_data, sse_events


class NamedBackend:
    def __init__(self, name: str) -> None:
        self.name = name


def hosts(*names: str) -> list[HostState]:
    return [HostState(NamedBackend(n), "llmaas") for n in names]  # type: ignore[arg-type]


def test_config_reads_models_hosts_and_routing() -> None:
    config = parse_config("""
[server]
port = 9000
[routing]
max_attempts = 2
[[models]]
name = "smollm2:135m"
hosts = ["http://10.0.0.1:8001", {url = "http://10.0.0.2:8001", kind = "openai"}]
""")
    assert config.server.port == 9000 and config.routing.max_attempts == 2
    assert config.models[0].hosts[1].kind == "openai"  # type: ignore[union-attr]


@pytest.mark.parametrize("text, message", [
    ("", "models"),
    ('[[models]]\nname = "a"\nhosts = []', "no hosts"),
    ('[[models]]\nname = "a"\nhosts = ["https://x:1"]', "http://HOST:PORT"),
    ('[[models]]\nname = "a"\nhosts = ["http://x:1/v1"]', "http://HOST:PORT"),
    ('[[models]]\nname = "a"\nhosts = ["http://x:1"]\n[[models]]\nname = "a"\nhosts = ["http://y:1"]', "twice"),
    ('[[models]]\nname = "a"\nhosts = ["http://x:1"]\n[routing]\nmax_attemps = 2', "max_attemps"),
    ('[[models]]\nname = "a"\nhosts = [{url = "http://x:1", kind = "grpc"}]', "kind"),
    ("[[models]\n", "invalid"),
])
def test_config_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_least_outstanding_tokens_wins_and_ties_rotate() -> None:
    a, b, c = hosts("a", "b", "c")
    b.outstanding_tokens = 100
    assert pick_host([a, b, c], None, 1.5, 0) in (a, c)
    picks = []
    for _ in range(4):
        host = pick_host([a, c], None, 1.5, 0)
        assert host is not None
        host.picks += 1
        picks.append(host.name)
    assert sorted(picks) == ["a", "a", "c", "c"]


def test_a_load_report_counts_when_it_knows_more() -> None:
    from gateway.fleet.host import LoadReport

    a, b = hosts("a", "b")
    a.report = LoadReport(num_running=3, num_waiting=9, kv_cache_usage=0.9, num_free_blocks=1, num_blocks=10,
                          block_size=16, num_pending_tokens=5000)
    b.outstanding_tokens = 1000
    assert pick_host([a, b], None, 1.5, 0) is b


def test_unhealthy_and_excluded_hosts_are_never_picked() -> None:
    a, b = hosts("a", "b")
    a.healthy = False
    assert pick_host([a, b], None, 1.5, 0) is b
    assert pick_host([a, b], None, 1.5, 0, exclude={"b"}) is None


def test_prefix_home_is_stable_and_yields_when_much_busier() -> None:
    fleet = hosts("a", "b", "c", "d")
    key = prefix_key("x" * 600, 512)
    assert key is not None and prefix_key("x" * 511, 512) is None
    home = pick_host(fleet, key, 1.5, 100)
    assert home is not None
    assert all(pick_host(fleet, key, 1.5, 100) is home for _ in range(5))
    home.outstanding_tokens = 100  # within slack: still home
    assert pick_host(fleet, key, 1.5, 100) is home
    home.outstanding_tokens = 101
    assert pick_host(fleet, key, 1.5, 100) is not home
    # Another gateway (fresh state, same hosts) agrees on the home.
    assert pick_host(hosts("a", "b", "c", "d"), key, 1.5, 100).name == home.name  # type: ignore[union-attr]


def test_removing_a_host_moves_only_its_own_prefixes() -> None:
    fleet = hosts("a", "b", "c", "d")
    keys = [prefix_key(f"{i}" * 600, 512) for i in range(1, 10)] + [prefix_key("y" * 600 + str(i), 512) for i in range(40)]
    before = {k: pick_host(fleet, k, 1.5, 100).name for k in keys}  # type: ignore[union-attr]
    fleet[0].healthy = False
    after = {k: pick_host(fleet, k, 1.5, 100).name for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "a" for k in moved)


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_sse_events_are_whole_whatever_the_chunking(split: int) -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    parts = [stream[i:i + split] for i in range(0, len(stream), split)]

    async def collect() -> list[bytes]:
        return [e async for e in sse_events(_chunks(parts))]

    events = asyncio.run(collect())
    assert events == [b'data: {"a":1}\n\n', b'data: {"b":2}\r\n\r\n', b": comment\n\n", b"data: [DONE]\n\n"]
    assert [event_data(e) for e in events] == [b'{"a":1}', b'{"b":2}', None, b"[DONE]"]


def test_a_body_that_ends_with_the_connection_is_whole() -> None:
    # RFC 9112 6.3: no Content-Length, not chunked: the body is what comes before the close.
    from gateway.fleet.http_client import ConnectionPool

    async def test() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"a":')
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"1}")
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        pool = ConnectionPool("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            response = await pool.request("GET", "/x")
            assert (response.status, await response.read()) == (200, b'{"a":1}')
            response.close()
        finally:
            pool.close()
            server.close()

    asyncio.run(asyncio.wait_for(test(), 10))


def test_a_timeout_on_a_pooled_connection_is_not_retried_on_a_fresh_one() -> None:
    from gateway.fleet.http_client import ConnectionPool, UpstreamError

    async def test() -> None:
        seen: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ")[1])
                if b"/slow" in head:
                    await asyncio.sleep(5)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        pool = ConnectionPool("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            response = await pool.request("GET", "/fast")
            await response.read()
            response.close()  # pooled
            with pytest.raises(UpstreamError, match="no response within"):
                await pool.request("GET", "/slow", first_byte_timeout_s=0.2)
            assert seen == [b"/fast", b"/slow"]
        finally:
            pool.close()
            server.close()

    asyncio.run(asyncio.wait_for(test(), 10))


def test_a_host_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = '[[models]]\nname = "m"\nhosts = [{url = "http://10.0.0.1:9000", api_key_env = "ENGINE_KEY_FOR_TEST"}]\n'
    monkeypatch.delenv("ENGINE_KEY_FOR_TEST", raising=False)
    with pytest.raises(ConfigError, match="ENGINE_KEY_FOR_TEST, which is not set"):
        parse_config(text)
    monkeypatch.setenv("ENGINE_KEY_FOR_TEST", "k")
    [host] = parse_config(text).models[0].hosts
    assert not isinstance(host, str) and host.api_key() == "k"


def test_a_probe_loop_ends_when_cancelled_even_if_a_probe_swallowed_the_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.11's wait_for returns its awaitable's result, dropping the cancellation, when the two
    # meet: the probe then returned normally, the loop ran on, and the gateway's stop hung for ever.
    from gateway.fleet import health

    entered = asyncio.Event()
    swallowed = []

    async def swallowing_probe(host: object, timeout_s: float) -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)  # once, as wait_for does when the request completed at that very moment

    monkeypatch.setattr(health, "probe", swallowing_probe)

    async def test() -> None:
        task = asyncio.create_task(health.probe_forever([object()], 0.0, 1.0))  # type: ignore[list-item]
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)

    asyncio.run(test())
