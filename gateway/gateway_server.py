"""`llmaas gateway`: the OpenAI API in front of a fleet of engine hosts, through the stage pipeline."""

from __future__ import annotations

import time

import msgspec

from gateway.fleet.config import GatewayConfig
from gateway.fleet.errors import GatewayError
from gateway.fleet.exchange import Stage
from gateway.fleet.fleet import BackendFactory, Fleet
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.proxy import Proxy
from gateway.fleet.wire import ModelCard, ModelList
from gateway.http import Request, Response, Router

_ENCODER = msgspec.json.Encoder()


class Gateway:
    def __init__(self, config: GatewayConfig, backend_for: BackendFactory | None = None,
                 stages: list[Stage] | None = None) -> None:
        self.config = config
        self.fleet = Fleet(config, backend_for)
        self.metrics = GatewayMetrics(self.fleet)
        # Metrics first: it sees every admitted request end, whichever later stage refuses it.
        self.proxy = Proxy(self.fleet, [self.metrics, *(stages or [])])
        self.created = int(time.time())

    def router(self) -> Router:
        router = Router()
        router.add("POST", "/v1/chat/completions", self.proxy.handle)
        router.add("POST", "/v1/completions", self.proxy.handle)
        router.add("GET", "/v1/models", self.list_models)
        router.add("GET", "/v1/models/{model}", self.get_model)
        router.add("GET", "/health", self.health)
        router.add("GET", "/metrics", self.metrics.render)
        return router

    async def start(self) -> None:
        await self.fleet.start()

    async def stop(self) -> None:
        await self.fleet.stop()

    async def list_models(self, request: Request) -> Response:
        cards = [ModelCard(id=name, created=self.created) for name in self.fleet.model_names]
        return Response(body=_ENCODER.encode(ModelList(data=cards)))

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            self.fleet.hosts_for(name)
        except GatewayError as exc:
            return exc.response()
        return Response(body=_ENCODER.encode(ModelCard(id=name, created=self.created)))

    async def health(self, request: Request) -> Response:
        """200 while every model has a healthy host; 503 naming the models that have none."""
        down = [name for name, hosts in self.fleet.by_model.items() if not any(h.healthy for h in hosts)]
        body = {"status": "degraded" if down else "ok", "models_down": down}
        return Response(status=503 if down else 200, body=_ENCODER.encode(body))
