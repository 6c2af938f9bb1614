"""The shipped Prometheus rules are valid YAML with the expected alerts, and every metric they
name is one the gateway or the engine exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import gateway.alerts
from gateway.fleet.config import GatewayConfig, ModelEntry
from gateway.fleet.fleet import Fleet
from gateway.fleet.metrics import GatewayMetrics

RULES = Path(gateway.alerts.__file__).with_name("prometheus_rules.yml")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_gateway_names() -> set[str]:
    fleet = Fleet(GatewayConfig(models=[ModelEntry(name="m", hosts=["http://127.0.0.1:9"])]))
    names = set()
    for family in GatewayMetrics(fleet).registry.collect():
        names.update(family.name + s for s in _SUFFIXES[family.type])
    return names


def test_rules_name_only_exported_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"LlmaasTtftP99High", "LlmaasErrorRateHigh", "LlmaasEngineHostDown",
                                          "LlmaasKvCacheFull"}
    gateway_names = exported_gateway_names()
    # Read, not imported: importing the engine's metrics module loads the engine (seconds).
    engine_source = RULES.parent.parent.joinpath("metrics.py").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical") and re.fullmatch(r"\d+[smh]", rule["for"])
        for name in set(re.findall(r"\bllmaas_[a-z_]+", rule["expr"])):
            assert name in gateway_names or f'"{name}"' in engine_source, f"{rule['alert']}: unknown metric {name}"
