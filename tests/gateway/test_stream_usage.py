"""Exact usage for streams through the gateway, in front of an instant engine double that sends usage
comments as our engine does: the ledger row holds the engine's counts whether the stream ends well,
the client leaves (499) or the engine dies (502); comments never reach the client; a server without
comments keeps the estimate."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.fleet.config import GatewayConfig, ModelEntry, SecuritySection
from gateway.gateway_server import Gateway
from gateway.tenancy import Catalog, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.store import UsageRow
from gateway.tenancy.tiers import load_config
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.gateway_harness import serving
from tests.gateway.raw_client import RawResponse, encode_request, post

NOW = 1768435200.0  # 2026-01-15: qwen3:8b is in production
MODEL = "qwen3:8b"
PROMPT = "hi there"


def chat(**extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], **extra}


def run(tmp_path: Path, engine: FakeEngine,
        test: Callable[[int, str, Tenancy, Gateway], Awaitable[None]]) -> None:
    """Runs `test(port, key, tenancy, gateway)` against a gateway with tenancy on, in front of `engine`."""
    clock = FakeClock(NOW)
    tenancy = Tenancy(SqliteStore(tmp_path / "t.db"), load_config(None), Catalog.load(clock), clock)

    def config(urls: list[str]) -> GatewayConfig:
        return GatewayConfig(models=[ModelEntry(name=MODEL, hosts=urls)], security=SecuritySection(enabled=False))

    async def main() -> None:
        async with serving(config, tenancy, [engine]) as (port, gateway):
            key, _ = tenancy.tokens.create("t", "standard")
            await test(port, key, tenancy, gateway)

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        tenancy.close()


async def ledger_row(tenancy: Tenancy) -> UsageRow:
    """The tenant's one ledger row, once written (a stream the client left is settled after it left)."""
    for _ in range(200):
        rows = tenancy.store.usage("t", 0)
        if rows:
            assert len(rows) == 1
            return rows[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no ledger row")


def counts(row: UsageRow) -> tuple[int, int, int, int, int]:
    return row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens, row.status


async def post_and_leave_after(port: int, key: str, body: dict, content_events: int) -> bytes:
    """Reads the stream until `content_events` content events arrived, then drops the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_request("POST", "/v1/chat/completions", json.dumps(body).encode(), key))
    seen = b""
    while seen.count(b'"content":') < content_events:
        chunk = await reader.read(65536)
        assert chunk, "the stream ended before the client left"
        seen += chunk
    writer.transport.abort()
    return seen


def test_a_complete_stream_is_billed_the_engines_usage_and_comments_stay_inside(tmp_path: Path) -> None:
    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        response = await post(port, "/v1/chat/completions", chat(stream=True), key)
        assert response.status == 200
        assert b": usage" not in response.content and b"\n:" not in response.content
        assert not any(b'"usage"' in e for e in response.events())  # the client did not ask for it
        assert counts(await ledger_row(tenancy)) == (5, 1, 4, 0, 200)

    run(tmp_path, FakeEngine("a", tokens=4), test)


def test_include_usage_gets_exactly_openais_usage_chunk(tmp_path: Path) -> None:
    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        body = chat(stream=True, stream_options={"include_usage": True})
        response = await post(port, "/v1/chat/completions", body, key)
        assert b": usage" not in response.content
        events = response.events()
        usages = [json.loads(e)["usage"] for e in events if b'"usage"' in e]
        assert usages == [{"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                           "prompt_tokens_details": {"cached_tokens": 1},
                           "completion_tokens_details": {"reasoning_tokens": 0}}]
        assert events[-2].startswith(b'{"object":"chat.completion.chunk","choices":[]') and events[-1] == b"[DONE]"
        assert counts(await ledger_row(tenancy)) == (5, 1, 4, 0, 200)

    run(tmp_path, FakeEngine("a", tokens=4), test)


def test_a_client_leaving_mid_stream_pays_what_the_engine_reported(tmp_path: Path) -> None:
    engine = FakeEngine("a", tokens=200, delay_s=0.01)

    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        seen = await post_and_leave_after(port, key, chat(stream=True), 3)
        assert b": usage" not in seen
        row = await ledger_row(tenancy)
        # The engine's own prompt counts (not the gateway's estimate); every token the client got is
        # billed, and none the engine did not produce (see gateway.openai.usage_comments).
        assert (row.input_tokens, row.cached_input_tokens, row.status) == (5, 1, 499)
        for _ in range(200):  # the engine sees the abort when its next write fails
            if engine.aborted:
                break
            await asyncio.sleep(0.01)
        assert engine.aborted == 1 and engine.produced < 200
        assert seen.count(b'"content":') <= row.output_tokens <= engine.produced

    run(tmp_path, engine, test)


def test_an_engine_dying_mid_stream_is_billed_exactly_what_it_produced(tmp_path: Path) -> None:
    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        response = await post(port, "/v1/chat/completions", chat(stream=True), key)
        assert b"upstream_stream_error" in response.content
        assert counts(await ledger_row(tenancy)) == (5, 1, 6, 0, 502)

    # Six tokens with their comments, then the connection is cut.
    run(tmp_path, FakeEngine("a", tokens=20, fail_after=6), test)


def test_a_server_without_comments_keeps_the_estimate(tmp_path: Path) -> None:
    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        response = await post(port, "/v1/chat/completions", chat(stream=True), key)
        assert b"upstream_stream_error" in response.content
        # The prompt estimated from its text (len // 4 + 8), the content events relayed counted.
        assert counts(await ledger_row(tenancy)) == (len(PROMPT) // 4 + 8, 0, 6, 0, 502)

    run(tmp_path, FakeEngine("a", tokens=20, fail_after=6, usage_comments=False), test)


def test_a_non_streamed_answer_is_billed_its_usage(tmp_path: Path) -> None:
    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        response: RawResponse = await post(port, "/v1/chat/completions", chat(), key)
        assert response.status == 200 and response.json()["usage"]["completion_tokens"] == 4
        assert counts(await ledger_row(tenancy)) == (5, 1, 4, 0, 200)

    run(tmp_path, FakeEngine("a", tokens=4), test)


def test_a_server_writing_spaced_json_is_billed_its_usage_chunk(tmp_path: Path) -> None:
    # Another OpenAI server (no usage comments) whose events read `"usage": {...}`: the usage chunk the
    # gateway asked for is read, billed, and kept from a client that did not ask for it.
    async def test(port: int, key: str, tenancy: Tenancy, gateway: Gateway) -> None:
        response = await post(port, "/v1/chat/completions", chat(stream=True), key)
        assert response.status == 200 and not any(b'"usage"' in e for e in response.events())
        assert counts(await ledger_row(tenancy)) == (5, 1, 4, 0, 200)

    run(tmp_path, FakeEngine("a", tokens=4, usage_comments=False, spaced_json=True), test)
