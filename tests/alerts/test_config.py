"""The [alerts] TOML section: defaults, a full example, and the mistakes it refuses."""

from __future__ import annotations

import pytest

from gateway.alerts import parse_alerts


def test_defaults_cover_each_kind_of_rule() -> None:
    section = parse_alerts("")
    assert section.enabled and section.webhook is None and section.history_file is None
    assert {r.kind for r in section.rules} == {"ttft", "error_rate", "kv_usage", "host_down", "budget"}


def test_a_full_section_parses() -> None:
    section = parse_alerts("""
[alerts]
interval_s = 5
webhook = "http://127.0.0.1:9093/hook"
history_file = "/tmp/alerts.jsonl"

[[alerts.rules]]
name = "slow"
kind = "e2e"
model = "qwen3:*"
quantile = 0.95
threshold = 30
window_s = 600
for_s = 120
min_requests = 20
severity = "critical"
summary = "see the runbook"
""")
    [rule] = section.rules  # rules given replace the defaults
    assert (rule.kind, rule.model, rule.quantile, rule.threshold, rule.for_s) == ("e2e", "qwen3:*", 0.95, 30.0, 120.0)
    assert section.interval_s == 5.0 and section.webhook == "http://127.0.0.1:9093/hook"


@pytest.mark.parametrize("text", [
    '[alerts]\n[[alerts.rules]]\nname = "x"\nkind = "cpu"\n',
    '[alerts]\n[[alerts.rules]]\nname = "x"\nkind = "ttft"\nquantile = 1.5\n',
    '[alerts]\n[[alerts.rules]]\nname = "x"\nkind = "ttft"\n[[alerts.rules]]\nname = "x"\nkind = "e2e"\n',
    '[alerts]\n[[alerts.rules]]\nname = "x"\nkind = "ttft"\nthreshhold = 1\n',
    '[alerts]\ninterval_s = 0\n',
])
def test_mistakes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid \\[alerts\\] config"):
        parse_alerts(text)


def test_the_package_imports_nothing_of_the_fleet() -> None:
    """The gateway's config (gateway.fleet.config) holds an `alerts: AlertsSection` field, so this
    package must import without loading the fleet, or the two would import each other."""
    import subprocess
    import sys

    code = "import sys, gateway.alerts; print(any(m.startswith('gateway.fleet') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
