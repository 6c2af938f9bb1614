"""`llmaas gateway`: the OpenAI API in front of a fleet of engine hosts, through the stage pipeline
(metrics -> tenancy: auth, permissions, lifecycle, limits -> prompt security -> router)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import msgspec

import security

from gateway.alerts import AlertEvaluator, Recorder, Sources
from gateway.console import add_console_routes
from gateway.fleet.config import GatewayConfig
from gateway.fleet.embeddings import EMBEDDINGS_PATH
from gateway.fleet.errors import GatewayError
from gateway.fleet.exchange import Stage
from gateway.fleet.fleet import BackendFactory, Fleet
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.proxy import Proxy
from gateway.http import LaneFactory, Request, Response, Router
from gateway.http.limits import ServerState
from gateway.http.protocol import ConnectionCount
from gateway.http.server import Lane
from gateway.openai.openapi import openapi_endpoint
from gateway.openai.protocol import Health, ModelCard, ModelList
from gateway.stages.security_stage import Detokenize, SecurityStage
from gateway.stages.tenancy_stage import TenancyStage
from gateway.tenancy import Tenancy
from gateway.tenancy.purger import PromptPurger

_ENCODER = msgspec.json.Encoder()
log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig, backend_for: BackendFactory | None = None,
                 tenancy: Tenancy | None = None, detokenizers: Mapping[str, Detokenize] | None = None,
                 purge_interval_s: float | None = None) -> None:
        """tenancy: an open Tenancy to use (tests, `llmaas serve`); by default one is opened from
        the config's [tenancy] section when it is enabled. detokenizers: the tokenizers of models
        served in process, by model, with which prompt security reads prompts of token ids.
        purge_interval_s: how often prompt text past its retention is purged, when the tenancy has
        a retention period (default: purger.purge_interval of it)."""
        self.config = config
        self.fleet = Fleet(config, backend_for)
        self.metrics = GatewayMetrics(self.fleet)
        self.created = int(time.time())
        self.tenancy_stage: TenancyStage | None = None
        self.lane: Lane | None = None  # the native lane, once a server made it
        self._store_lost_logged = False
        if config.tenancy.enabled:
            t = config.tenancy
            tenancy = tenancy or Tenancy.open(t.db, t.tiers, t.catalog, prompt_retention_s=t.prompt_retention_s)
            for name, hosts in self.fleet.by_model.items():
                tenancy.catalog.set_hosts(name, [h.name for h in hosts])
            self.tenancy_stage = TenancyStage(tenancy, t.require_auth)
        # Series for the models served here and in the catalog; any other name is counted as `other`.
        models = set(self.fleet.model_names) | (set(self.tenancy.catalog.names()) if self.tenancy is not None else set())
        self.recorder = Recorder(self.tenancy.clock if self.tenancy is not None else None, models=models)
        # Metrics and the recorder first: they see every admitted request end, whichever later
        # stage refuses it (the recorder reads the tenant that the tenancy stage finds).
        stages: list[Stage] = [self.metrics, self.recorder]
        if self.tenancy_stage is not None:
            stages.append(self.tenancy_stage)
        if config.security.enabled:
            overrides = self.tenancy.security_policies if self.tenancy is not None else None
            stages.append(SecurityStage(default_policy=config.security.policy,
                                        tenant_policies=config.security.tenants, overrides=overrides,
                                        detokenizers=detokenizers))
        self.proxy = Proxy(self.fleet, stages)
        self.alerts = (AlertEvaluator(config.alerts, Sources(self.recorder, self.fleet, self.tenancy),
                                      self.recorder.clock) if config.alerts.enabled else None)
        self.purger = (PromptPurger(self.tenancy.audit, purge_interval_s)
                       if self.tenancy is not None and self.tenancy.audit.retention_s else None)

    @property
    def tenancy(self) -> Tenancy | None:
        return self.tenancy_stage.tenancy if self.tenancy_stage is not None else None

    def router(self, admin_token: str | None = None) -> Router:
        router = Router()
        router.add("POST", "/v1/chat/completions", self.proxy.handle)
        router.add("POST", "/v1/completions", self.proxy.handle)
        router.add("POST", EMBEDDINGS_PATH, self.proxy.handle)
        router.add("GET", "/v1/models", self.list_models)
        router.add("GET", "/v1/models/{model}", self.get_model)
        router.add("GET", "/health", self.health)
        router.add("GET", "/metrics", self.metrics.render)
        router.add("GET", "/openapi.json", openapi_endpoint(router))
        admin_token = admin_token or os.environ.get("LLMAAS_ADMIN_TOKEN")
        if self.tenancy is not None and admin_token:
            from gateway.admin import add_admin_routes

            add_admin_routes(router, self.tenancy, admin_token)
        add_console_routes(router, recorder=self.recorder, tenancy=self.tenancy, alerts=self.alerts,
                           admin_token=admin_token, models=lambda: self.fleet.model_names)
        return router

    def native_lane(self) -> tuple[LaneFactory | None, str]:
        """A factory of the native lane for this gateway's listening socket, or None and why not."""
        from gateway import native_lane

        reason = native_lane.unavailable(self.config, self.fleet, self.tenancy_stage)
        if reason is not None:
            return None, reason

        def factory(sock: socket.socket, state: ServerState, connections: ConnectionCount | None) -> Lane:
            lane = native_lane.NativeLane(sock, state, connections, self.config, self.fleet,
                                          [self.metrics, self.recorder], self.tenancy_stage,
                                          self.metrics.lane_handoffs.inc)
            self.metrics.refresh = lane.sync  # a scrape sees what the lane finished up to now
            self.lane = lane
            return lane

        return factory, "on"

    async def start(self) -> None:
        if self.config.security.enabled:
            security.warm()  # compiles the rules now (about a second), not on the first request
        await self.fleet.start()
        if self.alerts is not None:
            self.alerts.start()
        if self.purger is not None:
            self.purger.start()

    async def stop(self) -> None:
        if self.purger is not None:
            await self.purger.stop()
        if self.alerts is not None:
            await self.alerts.stop()
        await self.fleet.stop()
        await self.proxy.settled()  # rows of requests whose clients left (or were cut at the deadline)
        if self.tenancy is not None:
            self.tenancy.close()

    def _visible(self, request: Request) -> tuple[list[str], list[tuple[str, str]]]:
        """The models this caller may see (the catalog's that its token allows, or the fleet's), and
        the headers its answer carries: a token rotated by this very call sends its new secret."""
        if self.tenancy_stage is None:
            return self.fleet.model_names, []
        principal = self.tenancy_stage.principal(request.headers.get("authorization"))
        return self.tenancy_stage.tenancy.visible_models(principal), list(principal.rotation_headers)

    def _card(self, name: str) -> ModelCard:
        lifecycle = self.tenancy.catalog.card_fields(name) if self.tenancy is not None else {}
        return ModelCard(id=name, created=self.created, **lifecycle)  # type: ignore[arg-type]

    async def list_models(self, request: Request) -> Response:
        try:
            names, headers = self._visible(request)
        except GatewayError as exc:
            return exc.response()
        return Response(body=_ENCODER.encode(ModelList(data=[self._card(n) for n in names])), headers=headers)

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            names, headers = self._visible(request)
        except GatewayError as exc:
            return exc.response()
        if name not in names:
            response = GatewayError(404, f"The model `{name[:256]}` does not exist.", code="model_not_found",
                                    param="model").response()
            response.headers.extend(headers)
            return response
        return Response(body=_ENCODER.encode(self._card(name)), headers=headers)

    async def health(self, request: Request) -> Response:
        """200 while every model has a healthy host and the records reach the database; 503 naming
        the models that have none, or why the database is lost (its file deleted under the gateway, a
        PostgreSQL server that cannot be reached)."""
        down = [name for name, hosts in self.fleet.by_model.items() if not any(h.healthy for h in hosts)]
        lost = self.tenancy.store.file_lost() if self.tenancy is not None else None
        if lost is not None and not self._store_lost_logged:
            log.error("%s", lost)
            self._store_lost_logged = True
        body = Health(status="degraded" if down or lost else "ok", models_down=down,
                      store=lost if lost is not None else msgspec.UNSET)
        return Response(status=503 if down or lost else 200, body=_ENCODER.encode(body))
