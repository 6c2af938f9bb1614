"""Alerts: threshold rules over the gateway's recent traffic, its hosts and its tenants' budgets.

Wiring (in the gateway):

    recorder = Recorder()                              # a Stage: right after the metrics stage
    alerts = AlertEvaluator(config.alerts, Sources(recorder, fleet, tenancy))
    alerts.start()  # in Gateway.start (needs the running loop); `await alerts.stop()` in stop

Events are kept by `EventLog` (bounded memory, optional JSON-lines file) and POSTed to the
configured webhook. `prometheus_rules.yml` next to this file holds the same rules for operators
who run Prometheus and Alertmanager.
"""

from __future__ import annotations

from gateway.alerts.config import AlertRule, AlertsSection, parse_alerts
from gateway.alerts.evaluator import AlertEvaluator
from gateway.alerts.events import AlertEvent, EventLog
from gateway.alerts.recorder import Recorder
from gateway.alerts.rules import Reading, Sources
from gateway.alerts.webhook import Webhook

__all__ = ["AlertEvaluator", "AlertEvent", "AlertRule", "AlertsSection", "EventLog", "Reading", "Recorder",
           "Sources", "Webhook", "parse_alerts"]
