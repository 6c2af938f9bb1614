"""usage.energy_joules through `llmaas serve` on the real model: present only where the engine has
an energy meter, absent (never a made-up number) where none exists, as on a VM without RAPL."""
from __future__ import annotations

import json

from gateway.metrics import ServingMetrics
from tests.gateway.serve_stack import CAPITAL, MODEL, Running, raw_post


def usages(running: Running, stream: bool) -> list[dict]:
    body = {"model": MODEL, "messages": CAPITAL, "max_tokens": 3, "temperature": 0, "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {})}
    status, raw = raw_post(running, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200
    if not stream:
        return [json.loads(raw)["usage"]]
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: {")]
    return [e["usage"] for e in map(json.loads, events) if e.get("usage")]


def test_energy_in_usage_and_metrics_only_when_metered(running: Running) -> None:
    source = running.engine.engine.energy_source
    metrics = ServingMetrics(running.engine).render().body.decode()
    for stream in (False, True):
        [usage] = usages(running, stream)
        assert usage["completion_tokens"] == 3
        if source.meter is None:
            assert "energy_joules" not in usage, source.detail
        else:
            assert usage["energy_joules"] >= 0.0
    assert ("llmaas_energy_joules_total" in metrics) == (source.meter is not None)
