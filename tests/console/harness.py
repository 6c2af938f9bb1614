"""A real gateway (tenancy, security, the recorder stage, alerts, the console routes) in front of
an instant engine double, as the lead wires it in `Gateway`; and a small HTTP client with headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.alerts import AlertEvaluator, AlertRule, AlertsSection, Recorder, Sources
from gateway.console import add_console_routes
from gateway.fleet.config import GatewayConfig, ModelEntry
from gateway.gateway_server import Gateway
from gateway.http import serve
from gateway.tenancy import FakeClock, Tenancy
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.raw_client import RawResponse, parse_response

ADMIN = "admin-token-0123456789abcdef"
MODELS = ("qwen3:8b", "mistral-small3.2:24b")  # the second is in its deprecation notice at NOW


@dataclass
class Harness:
    gateway: Gateway
    port: int
    recorder: Recorder
    alerts: AlertEvaluator
    tenancy: Tenancy
    clock: FakeClock

    async def request(self, path: str, token: str | None = None, body: dict | None = None) -> RawResponse:
        data = json.dumps(body).encode() if body is not None else b""
        method = "POST" if body is not None else "GET"
        auth = f"authorization: Bearer {token}\r\n" if token else ""
        head = (f"{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{auth}"
                f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head.encode() + data)
            return parse_response(await reader.read())
        finally:
            writer.close()

    async def chat(self, token: str, model: str = MODELS[0], content: str = "hi", stream: bool = False) -> RawResponse:
        return await self.request("/v1/chat/completions", token, {
            "model": model, "messages": [{"role": "user", "content": content}], "stream": stream, "max_tokens": 16})

    async def api(self, path: str, token: str | None) -> dict:
        response = await self.request(path, token)
        assert response.status == 200, (path, response.status, response.content)
        return response.json()


def rules() -> list[AlertRule]:
    return [AlertRule(name="engine-host-down", kind="host_down", severity="critical"),
            AlertRule(name="tenant-budget-near", kind="budget", threshold=0.5)]


@asynccontextmanager
async def console_gateway(tenancy: Tenancy, clock: FakeClock, engine_delay_s: float = 0.0) -> AsyncIterator[Harness]:
    engine = FakeEngine("a", delay_s=engine_delay_s)
    await engine.start()
    config = GatewayConfig(models=[ModelEntry(name=m, hosts=[engine.url]) for m in MODELS])
    gateway = Gateway(config, tenancy=tenancy)
    recorder = Recorder(clock, models=set(MODELS) | set(tenancy.catalog.names()))  # as Gateway makes its own
    gateway.proxy.stages.insert(1, recorder)  # right after the metrics stage, as the lead wires it
    alerts = AlertEvaluator(AlertsSection(rules=rules()), Sources(recorder, gateway.fleet, tenancy), clock)
    router = gateway.router()
    add_console_routes(router, recorder=recorder, tenancy=tenancy, alerts=alerts, admin_token=ADMIN,
                       models=lambda: gateway.fleet.model_names)
    await gateway.start()
    server = await serve(router, "127.0.0.1", 0)
    try:
        yield Harness(gateway, server.port, recorder, alerts, tenancy, clock)
    finally:
        await server.shutdown(1.0)
        await alerts.stop()
        await gateway.fleet.stop()  # the fixture owns the tenancy and closes it
        await engine.stop()
