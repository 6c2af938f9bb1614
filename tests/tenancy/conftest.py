from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tenancy import Catalog, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.open_store import is_postgres
from gateway.tenancy.postgres_store import PostgresStore
from gateway.tenancy.store import Store
from gateway.tenancy.tiers import TierConfig, parse_config
from tests.tenancy.pg_server import PgServer, bin_dir

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test marked both_stores that uses the store (itself, or through `tenancy`) runs on each.
    if "store" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A PostgreSQL server for the session (pg_server.py); the tests that need one skip without it."""
    found = bin_dir()
    if found is None:
        pytest.skip("no PostgreSQL server installed (initdb, pg_ctl under /usr/lib/postgresql/*/bin)")
    server = PgServer(found)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PgServer) -> str:
    """A fresh, empty database of this test's own."""
    return postgres.new_database()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """SQLite's store, or PostgreSQL's in a test marked both_stores (run once with each)."""
    if getattr(request, "param", "sqlite") == "postgres":
        s: Store = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        s = SqliteStore(tmp_path / "t.db", synchronous="NORMAL")
    yield s
    s.close()


def open_at(location: str) -> Store:
    """The store at `location` with its defaults: a PostgreSQL URL's, or an SQLite file's."""
    return PostgresStore(location) if is_postgres(location) else SqliteStore(location)


def another(store: Store) -> Store:
    """A second store on the same database, with its own connections, as another process has."""
    return open_at(store.url if isinstance(store, PostgresStore) else store.path)  # type: ignore[attr-defined]


@pytest.fixture
def tenancy(store: Store, config: TierConfig, clock: FakeClock) -> Tenancy:
    catalog = Catalog.load(clock)
    for name in ("qwen3:8b", "qwen3:235b", "mistral-small3.2:24b", "granite3.3:8b"):
        catalog.set_hosts(name, ["gpu-1"])
    return Tenancy(store, config, catalog, clock)
