"""The gateway's /metrics: requests, tokens and latencies by model, the hosts' health and load, and
the client connections open on the gateway's HTTP servers.

A stage (first in the pipeline, so it sees every admitted request end, refusals included) counts
each exchange as it finishes; host gauges are read from the fleet at scrape time. Each gateway owns
its CollectorRegistry: no process-global state.
"""
from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.fleet.exchange import Exchange, FinishedBatch
from gateway.fleet.fleet import Fleet
from gateway.http import Request, Response
from gateway.http.protocol import ConnectionCount

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_INTER_TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class _ModelChildren:
    """One model label's metric children, found with one dict lookup per finished request. Each is
    made on its first use, as /metrics shows a series from then on (a zero is not an absence)."""

    label: str  # the served model's name, or "other"
    tokens: tuple[Any, Any, Any, Any] | None = None  # prompt, cached_prompt, completion, reasoning
    first_byte: Any = None
    inter_token: Any = None
    e2e: Any = None
    retries: Any = None
    requests: dict[tuple[str, int, str], Any] = field(default_factory=dict)  # by (tier, status, code)
    cost: dict[str, Any] = field(default_factory=dict)  # by tier


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
        self.lane_handoffs = Counter("llmaas_gateway_lane_handoffs", "Client connections the native lane handed "
                                     "to the Python server (streams, refusals, what it does not serve).", registry=r)
        # Kept by the HTTP servers this gateway is served on (serve(..., connections=...)).
        self.connections = ConnectionCount()
        Gauge("llmaas_gateway_open_connections", "Client connections open on the gateway's HTTP servers.",
              registry=r).set_function(self.connections.total)
        r.register(_FleetCollector(fleet))
        self._fleet = fleet
        # prometheus-client's labels() costs microseconds a call; the label sets in use are few, so
        # their children are kept: per model label (served models and "other"), then per tier.
        self._models: dict[str, _ModelChildren] = {}
        self._verdicts: dict[tuple[str, str], Any] = {}
        # Called before a scrape: the native lane reports what it finished since its last tick.
        self.refresh: Callable[[], None] | None = None

    def _model(self, model: str) -> _ModelChildren:
        children = self._models.get(model)
        if children is None:
            # A label per served model only: names from requests are unbounded (and untrusted).
            label = model if model in self._fleet.by_model else "other"
            children = self._models.get(label)
            if children is None:
                children = self._models[label] = _ModelChildren(label)
        return children

    async def admit(self, exchange: Exchange) -> None:
        return None

    def finish(self, exchange: Exchange) -> None:
        children = self._model(exchange.model)
        state = exchange.state
        action = state.get("verdict")
        if action is not None:
            for rule in state.get("security_rules") or ("",):
                verdict = self._verdicts.get((action, rule))
                if verdict is None:
                    verdict = self._verdicts[(action, rule)] = self.security.labels(action, rule)
                verdict.inc()
        principal = state.get("principal")
        tier = principal.tier.name if principal is not None else ""
        status, code = exchange.status, exchange.error_code or ""
        requests = children.requests.get((tier, status, code))
        if requests is None:
            requests = children.requests[(tier, status, code)] = self.requests.labels(children.label, tier,
                                                                                        str(status), code)
        requests.inc()
        cost = state.get("cost_eur")
        if cost:
            billed = children.cost.get(tier)
            if billed is None:
                billed = children.cost[tier] = self.cost.labels(children.label, tier)
            billed.inc(cost)
        label = children.label
        if exchange.attempts > 1:
            if children.retries is None:
                children.retries = self.retries.labels(label)
            children.retries.inc(exchange.attempts - 1)
        usage = exchange.usage
        if usage is not None:
            if children.tokens is None:
                children.tokens = tuple(self.tokens.labels(label, kind)  # type: ignore[assignment]
                                        for kind in ("prompt", "cached_prompt", "completion", "reasoning"))
            prompt, cached, completion, reasoning = children.tokens  # type: ignore[misc]
            prompt.inc(usage.prompt_tokens)
            cached.inc(usage.cached_tokens)
            completion.inc(usage.completion_tokens)
            reasoning.inc(usage.reasoning_tokens)
        if exchange.first_byte is not None:
            if children.first_byte is None:
                children.first_byte = self.first_byte.labels(label)
            children.first_byte.observe(exchange.first_byte - exchange.started)
        if exchange.content_gaps:
            if children.inter_token is None:
                children.inter_token = self.inter_token.labels(label)
            for gap in exchange.content_gaps:
                children.inter_token.observe(gap)
        if children.e2e is None:
            children.e2e = self.e2e.labels(label)
        children.e2e.observe(time.monotonic() - exchange.started)

    def finish_batch(self, batch: FinishedBatch) -> None:
        """The native lane's requests: the same series as `finish`, counted a batch at a time."""
        children = self._model(batch.model)
        label, tier = children.label, batch.tier
        requests = children.requests.get((tier, batch.status, ""))
        if requests is None:
            requests = children.requests[(tier, batch.status, "")] = self.requests.labels(label, tier,
                                                                                          str(batch.status), "")
        requests.inc(batch.count)
        if batch.cost_eur:
            billed = children.cost.get(tier)
            if billed is None:
                billed = children.cost[tier] = self.cost.labels(label, tier)
            billed.inc(batch.cost_eur)
        if batch.retries:
            if children.retries is None:
                children.retries = self.retries.labels(label)
            children.retries.inc(batch.retries)
        if batch.with_usage:
            if children.tokens is None:
                children.tokens = tuple(self.tokens.labels(label, kind)  # type: ignore[assignment]
                                        for kind in ("prompt", "cached_prompt", "completion", "reasoning"))
            for counter, n in zip(children.tokens, (batch.prompt_tokens, batch.cached_tokens,  # type: ignore[arg-type]
                                                    batch.completion_tokens, batch.reasoning_tokens)):
                counter.inc(n)
        if children.first_byte is None:
            children.first_byte = self.first_byte.labels(label)
        observe_many(children.first_byte, batch.ttft_s)
        if children.e2e is None:
            children.e2e = self.e2e.labels(label)
        observe_many(children.e2e, batch.e2e_s)

    async def render(self, request: Request) -> Response:
        if self.refresh is not None:
            self.refresh()
        return Response(body=generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """Histogram.observe for each value, with one lock round per bucket touched instead of two per
    value. It reaches into prometheus-client's histogram child (`_upper_bounds`, `_buckets`, `_sum`),
    as observe() itself does; tests/gateway/test_native_lane.py checks both give the same exposition."""
    if not values:
        return
    bounds = histogram._upper_bounds
    for index, n in Tally(bisect_left(bounds, v) for v in values).items():
        histogram._buckets[index].inc(n)
    histogram._sum.inc(math.fsum(values))


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
            in_flight.add_metric([host.name], host.in_flight + host.lane_in_flight)
            outstanding.add_metric([host.name], host.outstanding_tokens + host.lane_outstanding_tokens)
        yield from (up, in_flight, outstanding)
