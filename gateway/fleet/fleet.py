"""The engine hosts of a gateway, by model, and the task that keeps their health and load current."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.fleet.backend import Backend, HttpBackend
from gateway.fleet.config import GatewayConfig, host_entries
from gateway.fleet.errors import GatewayError
from gateway.fleet.health import probe, probe_forever
from gateway.fleet.host import HostState

BackendFactory = Callable[[str], Backend]


class Fleet:
    def __init__(self, config: GatewayConfig, backend_for: BackendFactory | None = None) -> None:
        """backend_for: url -> Backend (default: pooled HTTP); `llmaas serve` maps its engine's url
        to the in-process backend."""
        routing = config.routing
        self.routing = routing
        self.hosts: dict[str, HostState] = {}
        self.by_model: dict[str, list[HostState]] = {}
        for model in config.models:
            for entry in host_entries(model):
                url = entry.url.rstrip("/")
                host = self.hosts.get(url)
                if host is None:
                    backend = backend_for(url) if backend_for is not None else \
                        HttpBackend(url, routing.connect_timeout_s, routing.first_byte_timeout_s, entry.api_key())
                    host = self.hosts[url] = HostState(backend, entry.kind)
                host.models.add(model.name)
                self.by_model.setdefault(model.name, []).append(host)
        self._task: asyncio.Task[None] | None = None

    @property
    def model_names(self) -> list[str]:
        return list(self.by_model)

    def hosts_for(self, model: str) -> list[HostState]:
        hosts = self.by_model.get(model)
        if hosts is None:
            raise GatewayError(404, f"The model `{model}` does not exist.", code="model_not_found", param="model")
        return hosts

    async def start(self) -> None:
        """One probe round before serving (hosts that are down start out of rotation), then a
        background round every health_interval_s."""
        hosts = list(self.hosts.values())
        await asyncio.gather(*(probe(h, self.routing.health_timeout_s) for h in hosts))
        self._task = asyncio.create_task(
            probe_forever(hosts, self.routing.health_interval_s, self.routing.health_timeout_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our caller's own cancellation, not the probes'
        for host in self.hosts.values():
            host.backend.close()
