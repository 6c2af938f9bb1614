"""The gateway's /metrics: requests, tokens and latencies by model, the hosts' health and load, and
the client connections open on the gateway's HTTP servers.

A stage (first in the pipeline, so it sees every admitted request end, refusals included) counts
each exchange as it finishes; host gauges are read from the fleet at scrape time. Each gateway owns
its CollectorRegistry: no process-global state.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.fleet.exchange import Exchange
from gateway.fleet.fleet import Fleet
from gateway.http import Request, Response
from gateway.http.protocol import ConnectionCount

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_INTER_TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    def __init__(self, fleet: Fleet) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("llmaas_gateway_requests", "Requests finished, by model, the caller's tier, "
                                "status and error code.", ["model", "tier", "status", "code"], registry=r)
        self.cost = Counter("llmaas_gateway_cost_eur", "Cost billed for finished requests, by model and tier.",
                            ["model", "tier"], registry=r)
        self.tokens = Counter("llmaas_gateway_tokens", "Tokens of finished requests, by model and kind "
                              "(prompt, cached_prompt, completion, reasoning).", ["model", "kind"], registry=r)
        self.first_byte = Histogram("llmaas_gateway_time_to_first_byte_seconds", "Arrival to the engine's first "
                                    "byte (a stream's first event), by model.", ["model"],
                                    buckets=_LATENCY_BUCKETS_S, registry=r)
        self.inter_token = Histogram("llmaas_gateway_inter_token_latency_seconds", "Time between successive "
                                     "content events of a stream, as relayed, by model.", ["model"],
                                     buckets=_INTER_TOKEN_BUCKETS_S, registry=r)
        self.e2e = Histogram("llmaas_gateway_request_duration_seconds", "Arrival to the end of the answer, by model.",
                             ["model"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.retries = Counter("llmaas_gateway_retries", "Requests sent again to another host, by model.",
                               ["model"], registry=r)
        self.security = Counter("llmaas_gateway_security_verdicts", "Prompt security verdicts by action, and the "
                                "rules behind flags and blocks.", ["action", "rule"], registry=r)
        # Kept by the HTTP servers this gateway is served on (serve(..., connections=...)).
        self.connections = ConnectionCount()
        Gauge("llmaas_gateway_open_connections", "Client connections open on the gateway's HTTP servers.",
              registry=r).set_function(lambda: self.connections.open)
        r.register(_FleetCollector(fleet))
        self._fleet = fleet
        # prometheus-client's labels() costs microseconds a call; the label sets in use are few.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def admit(self, exchange: Exchange) -> None:
        return None

    def finish(self, exchange: Exchange) -> None:
        # A label per served model only: names from requests are unbounded (and untrusted).
        model = exchange.model if exchange.model in self._fleet.by_model else "other"
        action = exchange.state.get("verdict")
        if action is not None:
            rules = exchange.state.get("security_rules") or ("",)
            for rule in rules:
                self._child(self.security, action, rule).inc()
        principal = exchange.state.get("principal")
        tier = principal.tier.name if principal is not None else ""
        self._child(self.requests, model, tier, str(exchange.status), exchange.error_code or "").inc()
        cost = exchange.state.get("cost_eur")
        if cost:
            self._child(self.cost, model, tier).inc(cost)
        if exchange.attempts > 1:
            self._child(self.retries, model).inc(exchange.attempts - 1)
        usage = exchange.usage
        if usage is not None:
            self._child(self.tokens, model, "prompt").inc(usage.prompt_tokens)
            self._child(self.tokens, model, "cached_prompt").inc(usage.cached_tokens)
            self._child(self.tokens, model, "completion").inc(usage.completion_tokens)
            self._child(self.tokens, model, "reasoning").inc(usage.reasoning_tokens)
        if exchange.first_byte is not None:
            self._child(self.first_byte, model).observe(exchange.first_byte - exchange.started)
        if exchange.content_gaps:
            inter_token = self._child(self.inter_token, model)
            for gap in exchange.content_gaps:
                inter_token.observe(gap)
        self._child(self.e2e, model).observe(time.monotonic() - exchange.started)

    async def render(self, request: Request) -> Response:
        return Response(body=generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)


class _FleetCollector(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("llmaas_gateway_host_up", "1 while a host is in rotation.", labels=["host"])
        in_flight = GaugeMetricFamily("llmaas_gateway_host_in_flight", "Requests in flight to a host.", labels=["host"])
        outstanding = GaugeMetricFamily("llmaas_gateway_host_outstanding_tokens",
                                        "Estimated tokens of work in flight to a host.", labels=["host"])
        for host in self._fleet.hosts.values():
            up.add_metric([host.name], 1.0 if host.healthy else 0.0)
            in_flight.add_metric([host.name], host.in_flight)
            outstanding.add_metric([host.name], host.outstanding_tokens)
        yield from (up, in_flight, outstanding)
