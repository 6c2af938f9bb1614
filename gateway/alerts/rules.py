"""What each kind of alert rule measures, now: one reading per instance (a model, a host, a tenant).

A reading is breaching when its value is above the rule's threshold (host_down reads 1.0 for a host
out of rotation, with threshold 0). Instances with too little data give no reading at all, which
counts as not breaching (a quiet model resolves its latency alert).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.alerts.config import AlertRule
from gateway.alerts.recorder import Recorder
from gateway.tenancy.rate_limit import month_start

if TYPE_CHECKING:  # at run time these are only read: the gateway's config may import this package
    from gateway.fleet.fleet import Fleet
    from gateway.tenancy import Tenancy


@dataclass(slots=True, frozen=True)
class Reading:
    labels: tuple[tuple[str, str], ...]  # e.g. (("model", "qwen3:8b"),): identifies the instance
    value: float


@dataclass(slots=True)
class Sources:
    """Where rules read from; any may be missing (no fleet in a unit test, tenancy off)."""

    recorder: Recorder
    fleet: Fleet | None = None
    tenancy: Tenancy | None = None


def _latency(rule: AlertRule, src: Sources, which: str) -> list[Reading]:
    out = []
    for model, b in src.recorder.window(rule.window_s, rule.model).items():
        hist = b.ttft if which == "ttft" else b.e2e
        if hist.count >= rule.min_requests:
            out.append(Reading((("model", model),), hist.quantile(rule.quantile) or 0.0))
    return out


def _error_rate(rule: AlertRule, src: Sources) -> list[Reading]:
    return [Reading((("model", model),), b.server_errors / b.requests)
            for model, b in src.recorder.window(rule.window_s, rule.model).items()
            if b.requests >= rule.min_requests]


def _kv_usage(rule: AlertRule, src: Sources) -> list[Reading]:
    if src.fleet is None:
        return []
    return [Reading((("host", h.name),), h.report.kv_cache_usage)
            for h in src.fleet.hosts.values() if h.report is not None and h.healthy]


def _host_down(rule: AlertRule, src: Sources) -> list[Reading]:
    if src.fleet is None:
        return []
    return [Reading((("host", h.name),), 0.0 if h.healthy else 1.0) for h in src.fleet.hosts.values()]


def _budget(rule: AlertRule, src: Sources) -> list[Reading]:
    """Each tenant's spend this month over its budget (the largest of its live tokens' tiers)."""
    t = src.tenancy
    if t is None:
        return []
    now = t.clock.time()
    budgets: dict[str, float] = {}
    for token in t.store.list_tokens():
        if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
            continue
        tier = t.config.tiers.get(token.tier)
        if tier is not None and tier.monthly_budget_eur > 0:
            budgets[token.tenant] = max(budgets.get(token.tenant, 0.0), tier.monthly_budget_eur)
    start = month_start(now)
    return [Reading((("tenant", tenant),), t.store.cost_since(tenant, start) / budget)
            for tenant, budget in sorted(budgets.items())]


MEASURES: dict[str, Callable[[AlertRule, Sources], list[Reading]]] = {
    "ttft": lambda r, s: _latency(r, s, "ttft"),
    "e2e": lambda r, s: _latency(r, s, "e2e"),
    "error_rate": _error_rate,
    "kv_usage": _kv_usage,
    "host_down": _host_down,
    "budget": _budget,
}


def measure(rule: AlertRule, sources: Sources) -> list[Reading]:
    return MEASURES[rule.kind](rule, sources)
