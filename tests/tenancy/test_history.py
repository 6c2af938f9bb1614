"""The store's request history: time-indexed pages with filters, keyset paging, tenant isolation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.tenancy import AuthenticationError, Counts, FakeClock, PermissionDenied, SqliteStore, Tenancy
from gateway.tenancy.history import HistoryQuery, cursor_after, parse_cursor
from gateway.tenancy.migrations import MIGRATIONS, migrate
from tests.tenancy.conftest import NOW

pytestmark = pytest.mark.both_stores  # the store's queries, on SQLite and on PostgreSQL


def traffic(tenancy: Tenancy, clock: FakeClock) -> None:
    """acme: 4 answers (qwen3:8b, granite, qwen3:8b, an error) and a 403; beta: 2 answers; a bad token.
    One request a minute, so each entry has its own time."""
    acme, _ = tenancy.tokens.create("acme", "big", ["qwen3:*", "granite*"])
    beta, _ = tenancy.tokens.create("beta", "big")
    a = tenancy.authenticate(f"Bearer {acme}")
    b = tenancy.authenticate(f"Bearer {beta}")
    for i, (p, model, status) in enumerate([(a, "qwen3:8b", 200), (b, "qwen3:8b", 200), (a, "granite3.3:8b", 200),
                                            (a, "qwen3:8b", 200), (b, "granite3.3:8b", 200),
                                            (a, "qwen3:8b", 502)]):
        admission = tenancy.admit(p, model, prompt_tokens=10, max_tokens=5, request_id=f"r{i}")
        tenancy.finish(admission, Counts(10, 2, 5 - (status != 200) * 5, 1), status).result()
        clock.advance(60)
    with pytest.raises(PermissionDenied):
        tenancy.admit(a, "mistral-small3.2:24b", prompt_tokens=3, max_tokens=5, request_id="r6")
    clock.advance(60)
    with pytest.raises(AuthenticationError):
        tenancy.authenticate("Bearer llmaas-wrong", request_id="r7")
    tenancy.store.flush()


def ids(store: SqliteStore, **kw: object) -> list[str]:
    return [e.request_id for e in store.history(HistoryQuery(**{"tenant": None, "since": NOW, **kw}))]


def test_filters_and_isolation(tenancy: Tenancy, clock: FakeClock) -> None:
    traffic(tenancy, clock)
    store = tenancy.store
    assert ids(store) == ["r7", "r6", "r5", "r4", "r3", "r2", "r1", "r0"]  # newest first, refusals included
    assert ids(store, tenant="acme") == ["r6", "r5", "r3", "r2", "r0"]
    assert ids(store, tenant="beta") == ["r4", "r1"]
    assert ids(store, tenant="nobody") == []
    assert ids(store, tenant="acme", model="qwen3:*") == ["r5", "r3", "r0"]
    assert ids(store, tenant="acme", model="[!q]*") == ["r6", "r2"]  # fnmatch's negated set
    assert ids(store, tenant="acme", status=(400, 599)) == ["r6", "r5"]
    assert ids(store, status=(401, 401)) == ["r7"]
    assert ids(store, since=NOW + 60, until=NOW + 240) == ["r3", "r2", "r1"]  # [since, until)
    assert ids(store, tenant="beta", since=NOW + 120) == ["r4"]


def test_entries_carry_the_ledger_row_or_the_refusal(tenancy: Tenancy, clock: FakeClock) -> None:
    traffic(tenancy, clock)
    by_id = {e.request_id: e for e in tenancy.store.history(HistoryQuery(None, NOW))}
    ok = by_id["r0"]
    assert (ok.tenant, ok.model, ok.status, ok.reason, ok.verdict) == ("acme", "qwen3:8b", 200, "ok", None)
    assert (ok.input_tokens, ok.cached_input_tokens, ok.output_tokens, ok.reasoning_tokens) == (10, 2, 5, 1)
    assert ok.cost_eur == pytest.approx((8 * 0.9 + 2 * 0.9 + 4 * 5.0 + 1 * 21.0) / 1e6)
    assert ok.latency_ms is not None and ok.time == NOW
    assert (by_id["r5"].status, by_id["r5"].reason, by_id["r5"].output_tokens) == (502, "error", 0)
    refused = by_id["r6"]
    assert (refused.status, refused.reason, refused.latency_ms, refused.cost_eur) == (403, "permission", None, 0.0)
    assert (by_id["r7"].tenant, by_id["r7"].reason) == (None, "auth")


def test_a_reused_request_id_never_joins_another_tenants_row(tenancy: Tenancy, clock: FakeClock) -> None:
    """Clients choose request ids (x-request-id): the same id at the same time in two tenants."""
    for tenant in ("acme", "beta"):
        secret, _ = tenancy.tokens.create(tenant, "big")
        p = tenancy.authenticate(f"Bearer {secret}")
        admission = tenancy.admit(p, "qwen3:8b", prompt_tokens=4, max_tokens=4, request_id="same")
        tenancy.finish(admission, Counts(4, 0, 3 if tenant == "acme" else 1, 0)).result()
    entries = tenancy.store.history(HistoryQuery("beta", NOW))
    assert [(e.tenant, e.output_tokens) for e in entries] == [("beta", 1)]
    both = tenancy.store.history(HistoryQuery(None, NOW))
    assert sorted((e.tenant, e.output_tokens) for e in both) == [("acme", 3), ("beta", 1)]


def test_keyset_pages_cover_everything_once(tenancy: Tenancy, clock: FakeClock) -> None:
    secret, _ = tenancy.tokens.create("acme", "big")
    p = tenancy.authenticate(f"Bearer {secret}")
    for i in range(23):  # several records share each time: the id orders them
        admission = tenancy.admit(p, "qwen3:8b", prompt_tokens=1, max_tokens=1, request_id=f"r{i:02d}")
        tenancy.finish(admission, Counts(1, 0, 1, 0)).result()
        if i % 4 == 3:
            clock.advance(1)
    for tenant in ("acme", None):
        seen: list[str] = []
        before = None
        while True:
            page = tenancy.store.history(HistoryQuery(tenant, NOW, limit=5, before=before))
            seen += [e.request_id for e in page]
            if len(page) < 5:
                break
            before = parse_cursor(cursor_after(page[-1]))
        assert seen == [f"r{i:02d}" for i in reversed(range(23))]


def test_cursor_round_trip_and_errors() -> None:
    from gateway.tenancy.history import HistoryEntry

    e = HistoryEntry(id=7, time=1768435200.123456, request_id="r", tenant=None, token_id=None, model=None,
                     status=200, reason="ok", input_tokens=0, cached_input_tokens=0, output_tokens=0,
                     reasoning_tokens=0, cost_eur=0.0, latency_ms=None, verdict=None)
    assert parse_cursor(cursor_after(e)) == (1768435200.123456, 7)
    for bad in ("", "12", "x:1", "1.0:y"):
        with pytest.raises(ValueError):
            parse_cursor(bad)


def test_migration_2_indexes_a_version_1_file(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db)
    conn.executescript(f"BEGIN; {MIGRATIONS[0][1]}; PRAGMA user_version = 1; COMMIT;")
    conn.close()
    store = SqliteStore(db)
    store.close()
    conn = sqlite3.connect(db)
    assert migrate(conn) == MIGRATIONS[-1][0]
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"audit_tenant_time", "audit_time"} <= names
    conn.close()
