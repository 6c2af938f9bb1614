"""The PostgreSQL store as a fleet of gateways uses it: two stores on one database are two gateways,
each with its own connections and writer. The store-level tests of SQLite run on it too (the
both_stores marker); these are the fleet's own, and its ways in (Tenancy.open, the CLI)."""

from __future__ import annotations

import asyncio
import fnmatch
import threading
from collections.abc import Iterator

import msgspec
import psycopg
import pytest

from gateway import cli, lane_tenancy
from gateway.tenancy import Counts, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.audit import AuditTrail, verify
from gateway.tenancy.history import sql_regex
from gateway.tenancy.native_limits import NativeRateLimiter
from gateway.tenancy.open_store import open_store
from gateway.tenancy.postgres_schema import MIGRATIONS, migrate
from gateway.tenancy.postgres_store import PostgresStore
from gateway.tenancy.store import AuditRecord, TokenRecord, UsageRow
from gateway.tenancy.tokens import PEPPER_ENV, load_pepper
from tests.tenancy.pg_server import PgServer


@pytest.fixture
def fleet(pg_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two gateways' stores on one database."""
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    yield a, b
    a.close()
    b.close()


def token(token_id: str, tenant: str = "acme") -> TokenRecord:
    return TokenRecord(id=token_id, tenant=tenant, tier="small", secret_hash=b"h" * 32, models=["qwen3:*"],
                       created_at=1.0)


def usage(request_id: str, time: float, cost: float, tenant: str = "acme") -> UsageRow:
    return UsageRow(request_id=request_id, time=time, tenant=tenant, token_id="t", model="qwen3:8b", input_tokens=3,
                    cached_input_tokens=0, output_tokens=2, reasoning_tokens=0, cost_eur=cost, status=200,
                    latency_ms=1.0)


def test_a_token_one_gateway_writes_the_other_sees_and_its_version_moves(
        fleet: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = fleet
    before = b.tokens_version()
    a.put_token(token("t1")).result()
    assert b.get_token("t1") == token("t1") and [t.id for t in b.list_tokens("acme")] == ["t1"]
    moved = b.tokens_version()
    assert moved > before
    assert a.revoke_token("t1", 5.0).result() and not b.revoke_token("t1", 6.0).result()
    assert b.tokens_version() > moved and b.get_token("t1").revoked_at == 5.0  # type: ignore[union-attr]
    # Settings both read: the first writer's value wins, for both (the token pepper's way).
    assert a.set_meta_once("pepper", "from-a") == "from-a" and b.set_meta_once("pepper", "from-b") == "from-a"


def test_rotations_racing_on_two_gateways_make_one_successor(fleet: tuple[PostgresStore, PostgresStore]) -> None:
    for n in range(10):
        old = token(f"old{n}")
        fleet[0].put_token(old).result()
        barrier = threading.Barrier(2)
        won: dict[str, bool] = {}

        def rotate(store: PostgresStore, name: str, n: int = n, old: TokenRecord = old) -> None:
            successor = msgspec.structs.replace(token(f"{name}{n}"), rotated_from=old.id)
            rotated = msgspec.structs.replace(old, rotated_to=successor.id, expires_at=100.0)
            barrier.wait()
            won[successor.id] = store.rotate_token(rotated, successor).result()

        threads = [threading.Thread(target=rotate, args=(store, name)) for store, name in zip(fleet, "ab")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won.values()) == [False, True]
        winner = next(i for i, ok in won.items() if ok)
        assert fleet[1].get_token(old.id).rotated_to == winner  # type: ignore[union-attr]
        assert [t.id for t in fleet[1].list_tokens() if t.rotated_from == old.id] == [winner]


def test_each_gateway_chains_its_own_records_and_verify_checks_both(
        fleet: tuple[PostgresStore, PostgresStore], capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock(1000.0)
    trails = [AuditTrail(store, clock) for store in fleet]
    for i in range(6):
        for trail in trails:
            clock.advance(1)
            trail.append(status=200, reason="ok", tenant="acme", request_id=f"{trail.chain}-{i}",
                         usage=usage(f"{trail.chain}-{i}", clock.time(), 0.5)).result()
    a, b = fleet
    records = list(a.audit_records())
    assert [r.chain for r in records[:4]] == [trails[0].chain, trails[1].chain] * 2  # interleaved in the table
    assert verify(records, a.audit_heads()) == []
    assert {c: seq for c, (seq, _) in b.audit_heads().items()} == {t.chain: 6 for t in trails}
    assert cli.main(["audit", "verify", "--db", a.url]) == 0
    with psycopg.connect(a.url, autocommit=True) as conn:
        conn.execute("UPDATE audit SET output_tokens = 99 WHERE chain = %s AND seq = 3", (trails[1].chain,))
        conn.execute("DELETE FROM audit WHERE chain = %s AND seq = 5", (trails[0].chain,))
    found = [(p.chain, p.seq, p.kind) for p in verify(b.audit_records(), b.audit_heads())]
    assert sorted(found) == sorted([(trails[0].chain, 5, "deleted"), (trails[1].chain, 3, "edited")])
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--db", a.url]) == 1
    assert f"chain {trails[1].chain} record 3: edited" in capsys.readouterr().out


def test_usage_from_both_gateways_adds_up(fleet: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = fleet
    futures = [store.record(usage(f"r{i}", 100.0 + i, 0.25 * (i + 1)), None) for i, store in enumerate([a, b, a, b])]
    futures.append(b.record(usage("other", 105.0, 9.0, tenant="beta"), None))
    for f in futures:
        f.result()
    assert a.cost_since("acme", 0.0) == b.cost_since("acme", 0.0) == pytest.approx(0.25 + 0.5 + 0.75 + 1.0)
    assert b.cost_since("acme", 102.0) == pytest.approx(1.75)
    assert [r.request_id for r in a.usage("acme", 0.0)] == ["r0", "r1", "r2", "r3"]
    assert [r.request_id for r in b.usage(None, 101.0, 104.0)] == ["r1", "r2", "r3"]


def test_gateways_starting_at_once_make_the_schema_once(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PEPPER_ENV, raising=False)
    barrier = threading.Barrier(4)
    opened: list[PostgresStore] = []
    failed: list[BaseException] = []

    peppers: list[bytes] = []

    def start() -> None:
        barrier.wait()
        try:
            store = PostgresStore(pg_url)
            opened.append(store)
            peppers.append(load_pepper(store))  # made by whichever comes first, for all
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failed == [] and len(opened) == 4 and len(set(peppers)) == 1
        assert opened[0].tokens_version() == 0
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(MIGRATIONS[-1][0],)]
            assert migrate(conn) == MIGRATIONS[-1][0]  # a second run changes nothing
    finally:
        for store in opened:
            store.close()


def test_a_bad_write_fails_alone_and_moves_no_chain(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        release = threading.Event()
        store.writer.submit(lambda conn: release.wait())  # holds the writer: what follows is one batch
        trail = AuditTrail(store, FakeClock(1000.0))
        good = [trail.append(status=200, reason="ok", request_id="r1"),
                store.writer.submit(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)")),
                store.put_token(token("t1"))]
        bad = AuditRecord(seq=9, time=1.0, tenant=None, token_id=None, client=None, model=None, status=200,
                          reason=None, chain="x")  # type: ignore[arg-type]  # NOT NULL refuses it
        refused = store.record(None, bad)
        last = trail.append(status=200, reason="ok", request_id="r2")
        release.set()
        with pytest.raises(psycopg.errors.UndefinedTable):
            good[1].result()
        with pytest.raises(psycopg.errors.NotNullViolation):
            refused.result()
        assert good[0].result() is None and good[2].result() is None and last.result() is None
        assert [r.request_id for r in store.audit_records()] == ["r1", "r2"] and store.get_token("t1") is not None
        assert set(store.audit_heads()) == {trail.chain} and trail.verify() == []
    finally:
        store.close()


def test_rows_written_on_an_event_loop_are_committed_when_their_future_resolves(pg_url: str) -> None:
    store, other = PostgresStore(pg_url), PostgresStore(pg_url)

    async def finish(i: int) -> None:
        await asyncio.wrap_future(store.record(usage(f"r{i}", float(i), 0.1), None))
        assert other.usage("acme", float(i), float(i) + 1)  # the other gateway sees it now

    async def main() -> None:
        release = threading.Event()
        store.writer.submit(lambda conn: release.wait())
        # A request whose client left: what awaits its row is cancelled, the row is written anyway.
        gone = asyncio.ensure_future(asyncio.wrap_future(store.record(usage("gone", 50.0, 0.1), None)))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await asyncio.gather(*(finish(i) for i in range(20)))

    try:
        asyncio.run(main())
        assert [r.request_id for r in other.usage("acme", 50.0)] == ["gone"]
    finally:
        store.close()
        other.close()


def test_a_lost_connection_is_made_again_and_a_database_gone_is_reported(postgres: PgServer) -> None:
    url = postgres.new_database()
    name = url.split("?")[0].rsplit("/", 1)[1]
    store = PostgresStore(url)
    try:
        store.put_token(token("t1")).result()
        postgres.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        store.put_token(token("t2")).result()  # on a new connection: nothing was lost
        assert {t.id for t in store.list_tokens()} == {"t1", "t2"}
        assert store.file_lost() is None
        store.flush()
        postgres.admin(f"DROP DATABASE {name} WITH (FORCE)")
        with pytest.raises(psycopg.OperationalError):
            store.put_token(token("t3")).result()
        lost = store.file_lost()
        assert lost is not None and f"the PostgreSQL database {name}" in lost and "cannot be reached" in lost
    finally:
        store.close()


def test_tenancy_open_takes_a_postgresql_url_and_keeps_the_lane_off(pg_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMAAS_DB", pg_url)
    tenancy = Tenancy.open()
    try:
        assert isinstance(tenancy.store, PostgresStore)
        tenancy.catalog.set_hosts("qwen3:8b", ["gpu-1"])
        secret, _ = tenancy.tokens.create("acme", "standard")
        principal = tenancy.authenticate(f"Bearer {secret}", request_id="r1")
        admission = tenancy.admit(principal, "qwen3:8b", prompt_tokens=7, max_tokens=5, request_id="r1")
        tenancy.finish(admission, Counts(7, 0, 5, 0)).result()
        assert [r.request_id for r in tenancy.store.usage("acme", 0.0)] == ["r1"]
        assert tenancy.audit.verify() == []
        why = lane_tenancy.unavailable(tenancy)
        if isinstance(tenancy.limiter, NativeRateLimiter):  # else the lane is off for that first
            assert why == "the store is not SQLite (the lane writes its ledger into an SQLite file)"
        assert why is not None
    finally:
        tenancy.close()


def test_open_store_chooses_by_location(tmp_path, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    for location, kind in [(str(tmp_path / "x.db"), SqliteStore), (pg_url, PostgresStore),
                           (pg_url.replace("postgresql://", "postgres://"), PostgresStore)]:
        store = open_store(location, cli=True)
        try:
            assert type(store) is kind
        finally:
            store.close()


def test_the_cli_works_on_a_postgresql_database(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A command that only reads, on a database without our tables: refused, and the database left empty.
    for read_only in (["tokens", "list"], ["usage", "--since", "30d"], ["audit", "verify"]):
        assert cli.main([*read_only, "--db", pg_url]) == 2, read_only
        assert "no llmaas tables in the PostgreSQL database" in capsys.readouterr().err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('schema_version')").fetchone() == (None,)
    assert cli.main(["tokens", "create", "--db", pg_url, "--tenant", "acme", "--tier", "standard", "--json"]) == 0
    token_id = msgspec.json.decode(capsys.readouterr().out)["id"]
    assert cli.main(["tokens", "revoke", "--db", pg_url, token_id]) == 0
    assert cli.main(["tokens", "list", "--db", pg_url, "--json"]) == 0
    assert [(t["id"], t["state"]) for t in msgspec.json.decode(capsys.readouterr().out)] == [(token_id, "revoked")]
    assert cli.main(["audit", "verify", "--db", pg_url]) == 0
    capsys.readouterr()
    nowhere = "postgresql:///none?host=/nonexistent-socket-dir&user=nobody"
    assert cli.main(["tokens", "list", "--db", nowhere]) == 2
    assert capsys.readouterr().err.startswith("llmaas: error: ")


def test_history_model_globs_match_as_fnmatch_does(pg_url: str) -> None:
    names = ["qwen3:8b", "qwen3:235b", "granite3.3:8b", "a*b", "a.b", "x[1]", "-", "^", "\\", "]", "é:1"]
    patterns = ["qwen3:*", "*:8b", "[!q]*", "[gq]*", "a?b", "a.b", "a\\*b", "x[[]1]", "[a-]", "[^]", "[\\]",
                "[]]", "[z-a]", "[!z-a]", "?:1", "*", "[", "x[1"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for pattern in patterns:
            rows = conn.execute("SELECT n, n ~ %s FROM unnest(%s::text[]) AS n", (sql_regex(pattern), names))
            assert {n: m for n, m in rows} == {n: fnmatch.fnmatchcase(n, pattern) for n in names}, pattern


def test_a_gateway_role_that_may_not_create_tables_opens_a_made_schema(postgres: PgServer) -> None:
    # A DBA makes the schema (the first start, as an owner); the gateways then run as a role that
    # may read and write the tables, nothing more.
    url = postgres.new_database()
    name = url.split("?")[0].rsplit("/", 1)[1]
    PostgresStore(url).close()
    role = f"gateway_{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in (f"CREATE ROLE {role} LOGIN",
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                    f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"):
            conn.execute(sql)  # type: ignore[arg-type]
    store = PostgresStore(url.replace(f"user={postgres.user}", f"user={role}"))
    try:
        store.put_token(token("t1")).result()
        store.record(usage("r1", 1.0, 0.5), None).result()
        assert store.tokens_version() == 1 and store.cost_since("acme", 0.0) == 0.5
    finally:
        store.close()


def test_no_statement_is_prepared_on_the_server(pg_url: str) -> None:
    """Behind a pooler in transaction mode a prepared statement is lost between transactions."""
    store = PostgresStore(pg_url)
    try:
        for i in range(12):  # psycopg prepares a statement run 5 times, unless told not to
            store.put_token(token(f"t{i}")).result()
            store.tokens_version()
            store.record(usage(f"r{i}", float(i), 0.1), None).result()
        for conn in (store._reader, store.writer._conn):
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    finally:
        store.close()
