from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.tenancy import SqliteStore
from gateway.tenancy.migrations import MIGRATIONS, migrate
from gateway.tenancy.store import TokenRecord


def token(token_id: str, tenant: str = "acme") -> TokenRecord:
    return TokenRecord(id=token_id, tenant=tenant, tier="small", secret_hash=b"h" * 32, models=["qwen3:*"],
                       created_at=1.0)


def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1][0]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(conn) == MIGRATIONS[-1][0]  # a second run changes nothing
    conn.close()


@pytest.mark.both_stores
def test_token_round_trip_and_listing(store: SqliteStore) -> None:
    store.put_token(token("a")).result()
    store.put_token(token("b", "other")).result()
    got = store.get_token("a")
    assert got == token("a")
    assert [t.id for t in store.list_tokens("acme")] == ["a"]
    assert {t.id for t in store.list_tokens()} == {"a", "b"}
    assert store.get_token("zzz") is None


def test_a_failing_write_does_not_sink_its_batch(store: SqliteStore) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    futures = [store.put_token(token("a")), store.writer.submit(bad), store.put_token(token("c"))]
    assert futures[0].result() is None and futures[2].result() is None
    with pytest.raises(sqlite3.OperationalError):
        futures[1].result()
    assert store.get_token("a") is not None and store.get_token("c") is not None


@pytest.mark.both_stores
def test_meta_set_once(store: SqliteStore) -> None:
    assert store.set_meta_once("k", "first") == "first"
    assert store.set_meta_once("k", "second") == "first"
    assert store.get_meta("k") == "first"


def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    store.close()
    with pytest.raises(RuntimeError):
        store.put_token(token("a"))


def test_sync_mode_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStore(tmp_path / "f.db", synchronous="full")
    assert store._read("PRAGMA synchronous")[0][0] == 2  # FULL
    store.close()
    monkeypatch.setenv("LLMAAS_DB_SYNC", "sometimes")
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "g.db")


def test_rows_written_on_an_event_loop_commit_in_one_loop_callback(store: SqliteStore) -> None:
    import asyncio

    from gateway.tenancy.store import UsageRow

    def row(i: int) -> UsageRow:
        return UsageRow(request_id=f"r{i}", time=float(i), tenant="acme", token_id="t", model="m", input_tokens=1,
                        cached_input_tokens=0, output_tokens=1, reasoning_tokens=0, cost_eur=0.0, status=200,
                        latency_ms=1.0)

    async def main() -> None:
        futures = [store.record(row(i), None) for i in range(5)]
        assert not any(f.done() for f in futures)  # nothing committed within the loop iteration
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        assert len(store.usage("acme", 0)) == 5
        store.record(row(5), None)
        store.flush()  # on the loop thread: commits the pending batch at once, no deadlock
        assert len(store.usage("acme", 0)) == 6
        store.record(row(6), None)

    asyncio.run(main())
    store.close()  # commits what a finished loop left behind
    reopened = SqliteStore(store.path)
    try:
        assert len(reopened.usage("acme", 0)) == 7
    finally:
        reopened.close()


@pytest.mark.parametrize("on_loop", [True, False])
def test_a_write_whose_waiter_left_is_committed_and_its_batch_resolves(tmp_path: Path, on_loop: bool) -> None:
    """No journal (synchronous=FULL): rows commit in a loop callback or on the writer thread, and a
    client that leaves cancels what awaits its row; the row is still written, the others answered."""
    import asyncio

    from gateway.tenancy.store import UsageRow

    store = SqliteStore(tmp_path / "t.db", synchronous="FULL")

    def row(i: int) -> UsageRow:
        return UsageRow(request_id=f"r{i}", time=float(i), tenant="acme", token_id="t", model="m", input_tokens=1,
                        cached_input_tokens=0, output_tokens=1, reasoning_tokens=0, cost_eur=0.0, status=200,
                        latency_ms=1.0)

    def write() -> list:
        gone = store.record(row(0), None)
        assert not gone.cancel()  # what asyncio.wrap_future does when its awaiter is cancelled
        return [gone, *(store.record(row(i), None) for i in range(1, 4))]

    async def on_the_loop() -> None:
        await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in write())), 10)

    try:
        if on_loop:
            asyncio.run(on_the_loop())
        else:
            for future in write():
                future.result(timeout=10)
        assert [r.request_id for r in store.usage("acme", 0)] == ["r0", "r1", "r2", "r3"]
    finally:
        store.close()
