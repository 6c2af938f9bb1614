from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tenancy import Catalog, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.tiers import TierConfig, parse_config

# 2026-01-15T00:00:00Z: inside the notice of models ending 2026-03-30, past those ending 2025-12-31.
NOW = 1768435200.0

SMALL = {
    "tiers": {
        "small": {"requests_per_minute": 5, "tokens_per_minute": 1000, "concurrent_requests": 3,
                  "max_tokens_per_request": 500, "monthly_budget_eur": 1.0, "priority": 1},
        "big": {"requests_per_minute": 100000, "tokens_per_minute": 10**9, "concurrent_requests": 100000,
                "max_tokens_per_request": 100000, "monthly_budget_eur": 10**6, "priority": 2,
                "prices": {"output": 5.0}},
        "local": {"requests_per_minute": 100000, "tokens_per_minute": 10**9, "concurrent_requests": 100000,
                  "max_tokens_per_request": 100000, "monthly_budget_eur": 10**6},
    },
    "prices": {"models": {"qwen3:235b": {"input": 2.0}}},
    "tokens": {"max_age_days": 90, "grace_days": 7},
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def config() -> TierConfig:
    return parse_config(SMALL)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db", synchronous="NORMAL")
    yield s
    s.close()


@pytest.fixture
def tenancy(store: SqliteStore, config: TierConfig, clock: FakeClock) -> Tenancy:
    catalog = Catalog.load(clock)
    for name in ("qwen3:8b", "qwen3:235b", "mistral-small3.2:24b", "granite3.3:8b"):
        catalog.set_hosts(name, ["gpu-1"])
    return Tenancy(store, config, catalog, clock)
