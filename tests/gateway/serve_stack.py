"""The `llmaas serve` stack for tests: the gateway with its tenant stages in front of the in-process
engine on the real model, on a loop thread; one per test package (see conftest.py), since loading
the model is the slow part."""
from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from gateway.cli_serve import LOCAL_ENGINE_URL
from gateway.engine_server import build_router, load_engine
from gateway.fleet.backend import LocalBackend
from gateway.fleet.config import GatewayConfig, ModelEntry
from gateway.gateway_server import Gateway
from gateway.http import Router, Server, serve
from gateway.tenancy import Tenancy

MODEL = "smollm2:135m"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Running:
    engine: AsyncLLMEngine
    port: int
    loop: asyncio.AbstractEventLoop
    servers: list[Server]
    api_key: str = "unused"
    tenancy: Tenancy | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, router: Router) -> Running:
        """Another server on the same loop and engine (e.g. with other serving options)."""
        server = asyncio.run_coroutine_threadsafe(serve(router, "127.0.0.1", 0), self.loop).result(10)
        self.servers.append(server)
        return Running(self.engine, server.port, self.loop, self.servers, self.api_key, self.tenancy)


def start_serve_stack(folder: Path) -> tuple[Running, Callable[[], None]]:
    """Starts the stack; returns it and the function that stops it."""
    engine = load_engine(MODEL, EngineConfig(dtype=torch.float32, kv_cache_bytes=64 * 1024 * 1024))
    tenancy = Tenancy.open(str(folder / "llmaas.db"))
    api_key, _ = tenancy.tokens.create("test", "standard", models=["smollm2:*"])
    engine_router = build_router(engine)
    # As `llmaas serve` builds it: prompt security reads token ids with the engine's tokenizer.
    gateway = Gateway(GatewayConfig(models=[ModelEntry(name=MODEL, hosts=[LOCAL_ENGINE_URL])]),
                      backend_for=lambda url: LocalBackend(engine_router, url), tenancy=tenancy,
                      detokenizers={MODEL: lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=False)})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(10)
    servers: list[Server] = []
    first = Running(engine, 0, loop, servers, api_key, tenancy).start(gateway.router())

    def stop() -> None:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.shutdown(5.0), loop).result(10)
        asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        engine.shutdown()

    return first, stop


def raw_post(running: Running, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json",
                                                        "authorization": f"Bearer {running.api_key}",
                                                        **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def all_blocks_free(engine: AsyncLLMEngine) -> bool:
    load = engine.load()
    return load.num_free_blocks == load.num_blocks and load.num_running == 0 and load.num_waiting == 0


def open_stream(running: Running, max_tokens: int) -> socket.socket:
    """Starts a streamed chat answer on a raw socket, for a test to read part of and then drop."""
    body = json.dumps({"model": MODEL, "messages": CAPITAL, "max_tokens": max_tokens, "ignore_eos": True,
                       "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                 b"authorization: Bearer %b\r\ncontent-length: %d\r\n\r\n%b"
                 % (running.api_key.encode(), len(body), body))
    return sock
