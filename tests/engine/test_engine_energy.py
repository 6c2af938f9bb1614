"""Per-request energy on the real model, from a scripted meter: each step's energy split by the
tokens each request computed in it, summing to the meter's delta; in the OpenAI usage and /metrics."""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import msgspec
import pytest
import torch

from engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
from engine.energy import EnergySource
from engine.outputs import RequestOutput
from gateway.engine_server import build_router
from gateway.http import Request
from gateway.metrics import ServingMetrics

MODEL = "smollm2:135m"


class ScriptedMeter:
    """An edge double for a hardware counter: returns the scripted readings in order."""

    kind, name = "fake", "scripted"

    def __init__(self) -> None:
        self._readings: Iterator[float] = iter(())

    def script(self, readings: Iterator[float] | list[float]) -> None:
        self._readings = iter(readings)

    def read_joules(self) -> float:
        return next(self._readings)


@pytest.fixture(scope="module")
def meter() -> ScriptedMeter:
    return ScriptedMeter()


@pytest.fixture(scope="module")
def engine(meter: ScriptedMeter) -> LLMEngine:
    # Prefix caching off: every prompt token is computed, so the token counts below are exact.
    config = EngineConfig(dtype=torch.float32, kv_cache_bytes=32 * 1024 * 1024, enable_prefix_caching=False)
    return LLMEngine(MODEL, config, energy=EnergySource(meter, "scripted"))


def run_to_end(engine: LLMEngine) -> dict[str, RequestOutput]:
    finished: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        finished.update((o.request_id, o) for o in engine.step() if o.finished)
    return finished


def test_step_energy_splits_by_tokens_and_sums_to_the_meter(engine: LLMEngine, meter: ScriptedMeter) -> None:
    # Readings: the first step's start, then one per step (10 J each); 40 -> 1000 passes while idle.
    meter.script([0.0, 10.0, 20.0, 30.0, 40.0, 1000.0, 1004.0, 1008.0])
    before = engine.stats.energy_joules
    greedy = dict(temperature=0, ignore_eos=True)
    engine.add_request("a", list(range(100, 106)), SamplingParams(max_tokens=2, **greedy))  # 6 prompt tokens
    engine.add_request("b", list(range(200, 210)), SamplingParams(max_tokens=4, **greedy))  # 10 prompt tokens
    done = run_to_end(engine)
    # Step 1: both prompts (6 + 10 tokens) share 10 J; step 2: a decode token each; steps 3-4: b alone.
    a, b = done["a"].usage, done["b"].usage
    assert a is not None and b is not None
    assert a.energy_joules == 10 * 6 / 16 + 10 / 2
    assert b.energy_joules == 10 * 10 / 16 + 10 / 2 + 10 + 10
    assert a.energy_joules + b.energy_joules == 40.0
    assert engine.stats.energy_joules == before + 40.0
    # After the idle gap, a lone request gets exactly what its own steps used (2 steps, 4 J each).
    engine.add_request("c", list(range(300, 305)), SamplingParams(max_tokens=2, **greedy))
    c = run_to_end(engine)["c"].usage
    assert c is not None and c.energy_joules == 8.0
    assert engine.stats_snapshot().energy_joules == before + 48.0


def test_abort_carries_the_energy_so_far(engine: LLMEngine, meter: ScriptedMeter) -> None:
    meter.script([0.0, 3.0, 4.0])
    engine.add_request("x", list(range(100, 108)), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    engine.step()
    engine.step()
    out = engine.abort("x")
    assert out is not None and out.usage is not None and out.usage.energy_joules == 4.0
    assert not engine.has_unfinished_requests()


def test_openai_usage_and_metrics_carry_the_energy(engine: LLMEngine, meter: ScriptedMeter) -> None:
    meter.script(itertools.count(0.0, 2.0))
    served = AsyncLLMEngine(engine)
    try:
        handler, _ = build_router(served).resolve("POST", "/v1/chat/completions")
        body = msgspec.json.encode({"model": MODEL, "max_tokens": 3, "temperature": 0, "ignore_eos": True,
                                    "messages": [{"role": "user", "content": "Hi"}]})
        steps_before, joules_before = engine.stats.num_steps, engine.stats.energy_joules
        response = asyncio.run(handler(Request("POST", "/v1/chat/completions", "", {}, body, None)))
        usage = msgspec.json.decode(response.body)["usage"]  # type: ignore[union-attr]
        steps = engine.stats.num_steps - steps_before
        assert usage["completion_tokens"] == 3 and steps == 3
        assert usage["energy_joules"] == 2.0 * steps  # alone in the engine: every step's energy is its own
        text = ServingMetrics(served).render().body.decode()
        assert f"llmaas_energy_joules_total {joules_before + 2.0 * steps}" in text
    finally:
        served.shutdown()
