"""The serving load generator against the real server, started in-process on an ephemeral port."""
from __future__ import annotations

import asyncio

import pytest

from bench.serve_load import BenchConfig, bench, markdown_table
from tests.gateway.serve_stack import MODEL, Running

pytestmark = pytest.mark.slow


def test_load_generator_measures_every_request(running: Running) -> None:
    config = BenchConfig(base_url=running.base_url, model=MODEL, concurrency=(2,), num_requests=4,
                         output_len=8, input_len=16, warmup=1, timeout=60,
                         api_key=running.api_key)
    [level] = asyncio.run(bench(config))
    assert level.concurrency == 2
    assert len(level.records) == 4  # the warm-up is not counted
    for record in level.records:
        assert record.error is None
        assert record.output_tokens == 8
        assert 0 < record.ttft <= record.e2e
        assert record.tpot is not None and record.tpot > 0
        assert all(itl >= 0 for itl in record.itls)
    s = level.summary
    assert (s.completed, s.errors) == (4, {})
    assert s.output_throughput == pytest.approx(s.request_throughput * 8)
    assert s.mean_input_tokens > 16  # the prompt plus the chat template
    assert "| 2 | 4 | 0 |" in markdown_table([level])


def test_bench_suite_against_our_server(running: Running) -> None:
    from bench.serve_suite import ServeSettings, run_serve
    from bench.workload import parse_length

    settings = ServeSettings(running.base_url, MODEL, ({"concurrency": 2},), parse_length("uniform:8-16", "input"),
                             parse_length("6", "output"), num_requests=3, warmup=1, timeout=60,
                             api_key=running.api_key)
    [level] = asyncio.run(run_serve(settings, {"gpu": "absent", "cpu": "absent"}, {}, show_progress=False))
    [rep] = level["repeats"]
    assert rep["summary"]["completed"] == 3 and rep["summary"]["errors"] == {}
    assert rep["metrics"]["output_tok_s"] == pytest.approx(rep["metrics"]["req_s"] * 6)
    assert rep["energy"]["cpu"] == {"measured": False, "reason": "absent"}
