"""GET /metrics: the engine's counters and the served requests' latencies, in Prometheus text format.

Each server owns its CollectorRegistry (no process-global state, so two servers or two tests never
mix their numbers). Engine numbers are read at scrape time from the engine's stats snapshot, so the
step loop pays nothing for a scrape; latencies are observed here, on the event loop, as the client
sees them.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.outputs import RequestOutput
from engine.stats import Histogram as StatsHistogram
from gateway.http import Request, Response

if TYPE_CHECKING:  # the engine (and torch) only where one is served
    from engine.async_engine import AsyncLLMEngine

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_INTER_TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """One server's registry: request latencies and statuses, plus the engine's own counters."""

    def __init__(self, engine: AsyncLLMEngine | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.ttft = Histogram("llmaas_time_to_first_token_seconds", "Request arrival to its first token.",
                              buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.inter_token = Histogram("llmaas_inter_token_latency_seconds", "Gap between a request's steps "
                                     "that produced tokens.", buckets=_INTER_TOKEN_BUCKETS_S, registry=self.registry)
        self.e2e = Histogram("llmaas_e2e_request_latency_seconds", "Request arrival to its last token.",
                             buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.requests = Counter("llmaas_http_requests", "HTTP requests answered, by route and status.",
                                ["path", "status"], registry=self.registry)
        self.finished = Counter("llmaas_request_success", "Choices that finished, by finish reason.",
                                ["finished_reason"], registry=self.registry)
        if engine is not None:
            self.registry.register(EngineCollector(engine))

    def render(self) -> Response:
        return Response(body=generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    async def track(self, outputs: AsyncIterator[RequestOutput], arrival: float) -> AsyncIterator[RequestOutput]:
        """Passes `outputs` through, timing them; `arrival` is time.perf_counter() at arrival."""
        last: float | None = None
        try:
            async for output in outputs:
                now = time.perf_counter()
                if any(delta.token_ids for delta in output.deltas):
                    if last is None:
                        self.ttft.observe(now - arrival)
                    else:
                        self.inter_token.observe(now - last)
                    last = now
                for delta in output.deltas:
                    if delta.finish_reason is not None:
                        self.finished.labels(delta.finish_reason).inc()
                if output.finished:
                    self.e2e.observe(now - arrival)
                yield output
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]


class EngineCollector(Collector):
    """Reads the engine's stats snapshot at scrape time."""

    def __init__(self, engine: AsyncLLMEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        s = self._engine.engine.stats_snapshot()
        yield GaugeMetricFamily("llmaas_num_requests_running", "Sequences (choices) in the running batch.",
                                value=s.num_running)
        yield GaugeMetricFamily("llmaas_num_requests_waiting", "Sequences (choices) waiting to be admitted.",
                                value=s.num_waiting)
        yield GaugeMetricFamily("llmaas_kv_cache_usage_ratio", "Fraction of KV-cache blocks held by sequences.",
                                value=s.kv_cache_usage)
        yield GaugeMetricFamily("llmaas_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / "
                                "prompt tokens looked up, since start.", value=s.prefix_cache_hit_rate)
        yield CounterMetricFamily("llmaas_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  value=s.prefix_query_tokens)
        yield CounterMetricFamily("llmaas_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                  value=s.prefix_hit_tokens)
        yield CounterMetricFamily("llmaas_num_preemptions", "Sequences preempted (blocks freed, recomputed later).",
                                  value=s.num_preemptions)
        yield CounterMetricFamily("llmaas_prompt_tokens", "Prompt tokens computed (prefix-cache hits excluded).",
                                  value=s.prompt_tokens)
        yield CounterMetricFamily("llmaas_generation_tokens", "Tokens generated.", value=s.generation_tokens)
        yield CounterMetricFamily("llmaas_engine_steps", "Engine steps run.", value=s.num_steps)
        if s.energy_joules is not None:  # only where a meter measures it: no series beats a made-up one
            yield CounterMetricFamily("llmaas_energy_joules", "Energy metered over the engine's steps (the GPU's on "
                                      "CUDA, the CPU packages' on CPU), idle time between busy periods excluded.",
                                      value=s.energy_joules)
        finished = CounterMetricFamily("llmaas_sequences_finished", "Sequences finished in the engine, by reason.",
                                       labels=["finished_reason"])
        for reason, count in sorted(s.finished.items()):
            finished.add_metric([reason], count)
        yield finished
        yield _histogram("llmaas_step_duration_seconds", "Time of one engine step.", s.step_time_s)
        yield _histogram("llmaas_batch_size", "Sequences in one engine step.", s.batch_size)
        yield _histogram("llmaas_step_tokens", "Tokens computed in one engine step.", s.step_tokens)


def _histogram(name: str, documentation: str, h: StatsHistogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*map(str, h.bounds), "+Inf"), h.counts):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=h.total)


class RegistryCollector:
    """Another registry's metrics, collected with this one's: `llmaas serve` shows its in-process
    engine's (running, waiting, KV cache, tokens, latencies) on the gateway's /metrics, the only
    one it serves. The names do not clash: the gateway's all start with llmaas_gateway_."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


async def metrics_endpoint(metrics: ServingMetrics, request: Request) -> Response:
    return metrics.render()
