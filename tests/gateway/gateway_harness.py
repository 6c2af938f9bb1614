"""A gateway (its Python server and stages) in front of engine doubles, for tests that read the
tenancy's records after: the store is left open (Gateway.stop would close it)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway.fleet.config import GatewayConfig
from gateway.gateway_server import Gateway
from gateway.http import serve
from gateway.tenancy import Tenancy
from tests.gateway.fake_engine import FakeEngine


@asynccontextmanager
async def serving(config_for: Callable[[list[str]], GatewayConfig], tenancy: Tenancy,
                  engines: list[FakeEngine]) -> AsyncIterator[tuple[int, Gateway]]:
    """Starts `engines`, then a gateway configured by `config_for(their urls)`; yields its port and itself."""
    for engine in engines:
        await engine.start()
    gateway = Gateway(config_for([engine.url for engine in engines]), tenancy=tenancy)
    await gateway.start()
    server = await serve(gateway.router(), "127.0.0.1", 0)
    try:
        yield server.port, gateway
    finally:
        await server.shutdown(1.0)
        if gateway.purger is not None:
            await gateway.purger.stop()
        await gateway.fleet.stop()
        for engine in engines:
            await engine.stop()
