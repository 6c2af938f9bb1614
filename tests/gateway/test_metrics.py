"""/metrics rendering: engine counters from a stats snapshot, histograms, per-server registries.

The numbers after real traffic through the real engine are checked in test_openai_api.py.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from engine.outputs import RequestOutput, SequenceDelta, Usage
from engine.stats import EngineStats
from gateway.metrics import ServingMetrics


def fake_engine(stats: EngineStats) -> Any:
    return SimpleNamespace(engine=SimpleNamespace(stats_snapshot=lambda: stats.copy()))


def samples(metrics: ServingMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().body.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_engine_counters_and_histograms_are_exported() -> None:
    stats = EngineStats(num_running=3, num_waiting=2, kv_cache_usage=0.25, num_preemptions=1,
                        prefix_query_tokens=40, prefix_hit_tokens=10)
    stats.prompt_tokens = 97
    stats.record_step(0.004, batch_size=3, num_tokens=100, num_sampled=3)
    stats.record_step(0.030, batch_size=5, num_tokens=5, num_sampled=5)
    stats.record_finish("stop")
    stats.record_finish("stop")
    stats.record_finish("abort")
    got = samples(ServingMetrics(fake_engine(stats)))
    assert got[("llmaas_num_requests_running", ())] == 3 and got[("llmaas_num_requests_waiting", ())] == 2
    assert got[("llmaas_kv_cache_usage_ratio", ())] == 0.25
    assert got[("llmaas_prefix_cache_hit_rate", ())] == 0.25
    assert got[("llmaas_num_preemptions_total", ())] == 1
    assert got[("llmaas_prompt_tokens_total", ())] == 97 and got[("llmaas_generation_tokens_total", ())] == 8
    assert got[("llmaas_engine_steps_total", ())] == 2
    assert got[("llmaas_sequences_finished_total", (("finished_reason", "stop"),))] == 2
    assert got[("llmaas_sequences_finished_total", (("finished_reason", "abort"),))] == 1
    # Buckets are cumulative: 4 ms falls in le=0.005, 30 ms in le=0.05.
    assert got[("llmaas_step_duration_seconds_bucket", (("le", "0.0025"),))] == 0
    assert got[("llmaas_step_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("llmaas_step_duration_seconds_bucket", (("le", "0.05"),))] == 2
    assert got[("llmaas_step_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert abs(got[("llmaas_step_duration_seconds_sum", ())] - 0.034) < 1e-9
    assert got[("llmaas_batch_size_bucket", (("le", "4"),))] == 1 and got[("llmaas_batch_size_sum", ())] == 8
    assert got[("llmaas_step_tokens_bucket", (("le", "4"),))] == 0
    assert got[("llmaas_step_tokens_bucket", (("le", "16"),))] == 1 and got[("llmaas_step_tokens_count", ())] == 2


def test_snapshot_is_a_copy() -> None:
    stats = EngineStats()
    snap = stats.copy()
    stats.record_step(0.01, 1, 1, 1)
    stats.record_finish("length")
    assert snap.num_steps == 0 and snap.step_time_s.count == 0 and snap.finished == {}


def test_latencies_observed_per_request_and_registries_are_per_server() -> None:
    async def outputs() -> AsyncIterator[RequestOutput]:
        for i in range(3):
            await asyncio.sleep(0.01)
            last = i == 2
            yield RequestOutput("r", [SequenceDelta(0, [i], "x", "length" if last else None)], finished=last,
                                usage=Usage(1, 0, 3) if last else None)

    async def main(metrics: ServingMetrics) -> int:
        tracked = metrics.track(outputs(), time.perf_counter())
        return len([o async for o in tracked])

    metrics, other = ServingMetrics(None), ServingMetrics(None)
    assert asyncio.run(main(metrics)) == 3
    got = samples(metrics)
    assert got[("llmaas_time_to_first_token_seconds_count", ())] == 1
    assert got[("llmaas_time_to_first_token_seconds_sum", ())] >= 0.01
    assert got[("llmaas_inter_token_latency_seconds_count", ())] == 2
    assert got[("llmaas_e2e_request_latency_seconds_count", ())] == 1
    assert got[("llmaas_e2e_request_latency_seconds_sum", ())] >= 0.03
    assert got[("llmaas_request_success_total", (("finished_reason", "length"),))] == 1
    assert samples(other)[("llmaas_time_to_first_token_seconds_count", ())] == 0
