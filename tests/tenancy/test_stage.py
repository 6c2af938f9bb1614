"""gateway.tenancy behind the lead's tenancy stage, in the gateway's real request path, in front of an
instant engine double."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.fleet.config import GatewayConfig, ModelEntry, SecuritySection
from gateway.gateway_server import Gateway
from gateway.http import serve
from gateway.tenancy import Tenancy
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import RawResponse
from tests.gateway.raw_client import post as raw_post

MODEL = "qwen3:8b"


async def post(port: int, body: dict, token: str | None) -> RawResponse:
    return await raw_post(port, "/v1/chat/completions", body, token)


def with_gateway(tenancy: Tenancy, test: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        engine = FakeEngine("a")
        await engine.start()
        config = GatewayConfig(models=[ModelEntry(name=MODEL, hosts=[engine.url])],
                               security=SecuritySection(enabled=False))
        gateway = Gateway(config, tenancy=tenancy)
        await gateway.start()
        server = await serve(gateway.router(), "127.0.0.1", 0)
        try:
            await test(server.port)
        finally:
            await server.shutdown(1.0)
            await gateway.fleet.stop()  # the fixture owns the tenancy and closes it
            await engine.stop()
    asyncio.run(asyncio.wait_for(main(), 60))


def chat(stream: bool = False, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


def test_auth_limits_ledger_through_the_gateway(tenancy: Tenancy) -> None:
    secret, record = tenancy.tokens.create("acme", "small", ["qwen3:*"])  # 5 requests per minute
    denied, _ = tenancy.tokens.create("other", "small", ["granite*"])

    async def test(port: int) -> None:
        r = await post(port, chat(), None)
        assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await post(port, chat(), denied)
        assert r.status == 403 and "x-ratelimit-limit-requests" in r.headers
        r = await post(port, chat(max_tokens=20), secret)
        assert r.status == 200, r.content
        assert r.headers["x-ratelimit-remaining-requests"] == "4"
        r = await post(port, chat(stream=True, max_tokens=20), secret)
        assert r.status == 200 and r.events()[-1] == b"[DONE]"
        for _ in range(3):
            assert (await post(port, chat(max_tokens=20), secret)).status == 200
        r = await post(port, chat(max_tokens=20), secret)
        assert r.status == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining-requests"] == "0"

    with_gateway(tenancy, test)
    rows = tenancy.store.usage("acme", 0)
    # Every answered request has its row, with the engine's exact counts (streamed one included).
    assert len(rows) == 5 and all(r.token_id == record.id and r.status == 200 for r in rows)
    assert all((r.input_tokens, r.cached_input_tokens, r.output_tokens) == (5, 1, 3) for r in rows)
    reasons = [a.reason for a in tenancy.store.audit_records()]
    assert reasons == ["auth", "permission", "ok", "ok", "ok", "ok", "ok", "limit"]
    assert tenancy.audit.verify() == []
