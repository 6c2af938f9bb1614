"""The [alerts] section of the gateway config: threshold rules, the evaluation timer, the webhook.

```toml
[alerts]
interval_s = 15                      # how often the rules are evaluated
webhook = "https://hooks.example/alerts"   # POST JSON for each firing and resolved event
history_file = "/var/lib/llmaas/alerts.jsonl"   # optional: events survive a restart

[[alerts.rules]]
name = "slow-first-token"
kind = "ttft"          # ttft | e2e (a latency quantile), error_rate, kv_usage, host_down, budget
model = "qwen3:*"      # glob; per model (ttft, e2e, error_rate)
quantile = 0.99
threshold = 2.0        # seconds (ttft, e2e), a fraction (error_rate, kv_usage, budget)
window_s = 300         # the data the rule looks at (ttft, e2e, error_rate)
for_s = 300            # how long the condition must hold before the alert fires
min_requests = 5       # fewer requests in the window: no opinion (ttft, e2e, error_rate)
severity = "warning"
```
"""

from __future__ import annotations

import msgspec

KINDS = ("ttft", "e2e", "error_rate", "kv_usage", "host_down", "budget")


class AlertRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    kind: str
    threshold: float = 0.0
    model: str = "*"
    quantile: float = 0.99
    window_s: float = 300.0
    for_s: float = 0.0
    min_requests: int = 1
    severity: str = "warning"
    summary: str = ""  # free text carried into each event (a runbook link, say)


def _default_rules() -> list[AlertRule]:
    return [
        AlertRule(name="ttft-p99-high", kind="ttft", threshold=5.0, for_s=300, min_requests=5),
        AlertRule(name="error-rate-high", kind="error_rate", threshold=0.05, for_s=300, min_requests=10,
                  severity="critical"),
        AlertRule(name="kv-cache-full", kind="kv_usage", threshold=0.95, for_s=300),
        AlertRule(name="engine-host-down", kind="host_down", for_s=60, severity="critical"),
        AlertRule(name="tenant-budget-near", kind="budget", threshold=0.9),
    ]


class AlertsSection(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    interval_s: float = 15.0
    webhook: str | None = None
    webhook_timeout_s: float = 5.0
    history_file: str | None = None  # JSON lines; None: the history lives in memory only
    history_size: int = 1000  # events kept in memory (and shown in the console)
    rules: list[AlertRule] = msgspec.field(default_factory=_default_rules)

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("alert rule names must be unique")
        for r in self.rules:
            if r.kind not in KINDS:
                raise ValueError(f"alert rule {r.name!r}: kind must be one of {', '.join(KINDS)}")
            if not 0.0 < r.quantile <= 1.0 or r.window_s <= 0 or r.for_s < 0:
                raise ValueError(f"alert rule {r.name!r}: quantile in (0, 1], window_s > 0, for_s >= 0")
        if self.interval_s <= 0 or self.history_size < 1:
            raise ValueError("alerts: interval_s > 0 and history_size >= 1")


class _Wrapper(msgspec.Struct):
    alerts: AlertsSection = msgspec.field(default_factory=AlertsSection)


def parse_alerts(text: str) -> AlertsSection:
    """The [alerts] section of a TOML document (defaults when it has none); ValueError if invalid."""
    try:
        return msgspec.toml.decode(text, type=_Wrapper).alerts
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"invalid [alerts] config: {exc}") from None
