from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
from cryptography.exceptions import InvalidTag

from gateway.tenancy import FakeClock, SqliteStore
from gateway.tenancy.audit import AuditTrail, Problem, export_jsonl
from gateway.tenancy.encryption import PromptCipher, load_key, new_key
from gateway.tenancy.postgres_store import PostgresStore
from gateway.tenancy.store import Store


def fill(store: SqliteStore, clock: FakeClock, n: int = 6, trail: AuditTrail | None = None) -> AuditTrail:
    trail = trail or AuditTrail(store, clock)
    for i in range(n):
        clock.advance(1)
        trail.append(status=200 if i % 2 else 429, reason="ok" if i % 2 else "limit", tenant="acme",
                     token_id="tok", client="10.0.0.1", model="qwen3:8b", input_tokens=i, output_tokens=2 * i,
                     request_id=f"req-{i}")
    store.flush()
    return trail


def tamper(store: Store, sql: str, *params: object) -> None:
    """An edit behind the store's back, on its database: SQLite's file, or PostgreSQL's (`?` marks its parameters)."""
    if isinstance(store, PostgresStore):
        with psycopg.connect(store.url, autocommit=True) as pg:
            pg.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        return
    conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def kinds(trail: AuditTrail) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in trail.verify()]


@pytest.mark.both_stores
def test_intact_chain_verifies_and_survives_restart(store: SqliteStore, clock: FakeClock) -> None:
    first = fill(store, clock)
    trail = fill(store, clock, 3, AuditTrail(store, clock))  # a new process starts a chain of its own
    assert trail.verify() == [] and trail.chain != first.chain
    assert [r.seq for r in store.audit_records()] == [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert {c: seq for c, (seq, _) in store.audit_heads().items()} == {first.chain: 6, trail.chain: 3}


def test_gateways_sharing_a_database_chain_apart(tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    # Two stores on one file, as two gateway processes: their records interleave in the table, each
    # chain verifies, and tampering is found in the chain it hit.
    a_store, b_store = SqliteStore(tmp_path / "shared.db"), SqliteStore(tmp_path / "shared.db")
    try:
        a, b = AuditTrail(a_store, clock), AuditTrail(b_store, clock)
        for i in range(10):
            for trail, store in ((a, a_store), (b, b_store)):
                clock.advance(1)
                trail.append(status=200, reason="ok", tenant="acme", request_id=f"{trail.chain}-{i}")
                store.flush()
        records = list(a_store.audit_records())
        assert [r.chain for r in records[:4]] == [a.chain, b.chain, a.chain, b.chain]
        assert a.verify() == [] and b.verify() == []
        tamper(a_store, "DELETE FROM audit WHERE chain = ? AND seq = 4", b.chain)
        assert [(p.chain, p.seq, p.kind) for p in a.verify()] == [(b.chain, 4, "deleted")]
    finally:
        a_store.close()
        b_store.close()


@pytest.mark.both_stores
def test_edited_field_is_caught(store: SqliteStore, clock: FakeClock) -> None:
    trail = fill(store, clock)
    tamper(store, "UPDATE audit SET output_tokens = 0 WHERE seq = 3")
    assert kinds(trail) == [(3, "edited")]


@pytest.mark.both_stores
def test_edited_and_rehashed_is_caught_at_the_next_link(store: SqliteStore, clock: FakeClock) -> None:
    from gateway.tenancy.audit import record_hash
    trail = fill(store, clock)
    rec = [r for r in store.audit_records() if r.seq == 3][0]
    rec.status = 200
    tamper(store, "UPDATE audit SET status = 200, hash = ? WHERE seq = 3", record_hash(rec))
    assert kinds(trail) == [(3, "edited")]


@pytest.mark.both_stores
def test_deleted_record_is_caught(store: SqliteStore, clock: FakeClock) -> None:
    trail = fill(store, clock)
    tamper(store, "DELETE FROM audit WHERE seq = 4")
    problems = trail.verify()
    assert [(p.seq, p.kind) for p in problems] == [(4, "deleted")]
    assert "4" in problems[0].message


@pytest.mark.both_stores
def test_deleted_tail_is_caught(store: SqliteStore, clock: FakeClock) -> None:
    trail = fill(store, clock)
    tamper(store, "DELETE FROM audit WHERE seq >= 5")
    assert kinds(trail) == [(5, "deleted")]


def test_reordered_records_are_caught(store: SqliteStore, clock: FakeClock) -> None:
    trail = fill(store, clock)
    # Move record 2 after record 4: delete it and insert it again with its own content.
    conn = sqlite3.connect(store.path)
    cols = [c[1] for c in conn.execute("PRAGMA table_info(audit)") if c[1] != "id"]
    row = conn.execute(f"SELECT {', '.join(cols)} FROM audit WHERE seq = 2").fetchone()
    conn.execute("DELETE FROM audit WHERE seq = 2")
    conn.execute("UPDATE audit SET id = id + 100 WHERE seq >= 5")
    conn.execute(f"INSERT INTO audit (id, {', '.join(cols)}) VALUES (50, {', '.join('?' * len(cols))})", row)
    conn.commit()
    conn.close()
    assert [r.seq for r in store.audit_records()] == [1, 3, 4, 2, 5, 6]
    assert kinds(trail) == [(2, "reordered")]


@pytest.mark.parametrize("sql,expected", [
    # SQLite keeps what an edit stores, whatever the column's type: each is a finding, not a crash.
    ("UPDATE audit SET seq = 'x' WHERE seq = 3", [(3, "edited"), (3, "deleted")]),
    ("UPDATE audit SET seq = 2.5 WHERE seq = 3", [(3, "edited"), (3, "deleted")]),
    ("UPDATE audit SET prompt = 'text, not a blob' WHERE seq = 3", [(3, "edited")]),
    ("UPDATE audit SET chain = x'41' WHERE seq = 6", [(0, "deleted"), (1, "deleted"), (6, "edited"), (6, "deleted")]),
    ("UPDATE meta SET value = 'garbage' WHERE key GLOB 'audit_head:*'", [(0, "edited")]),
    ("UPDATE meta SET value = '-5:abc' WHERE key GLOB 'audit_head:*'", [(0, "edited")]),
])
def test_records_edited_into_other_types_are_reported_not_raised(store: SqliteStore, clock: FakeClock, sql: str,
                                                                  expected: list[tuple[int, str]]) -> None:
    trail = fill(store, clock)
    tamper(store, sql)
    assert sorted(kinds(trail)) == sorted(expected)


@pytest.mark.parametrize("sql,message", [
    ("UPDATE meta SET value = '99999999999:abc' WHERE key GLOB 'audit_head:*'", "7..99999999999 missing at the end"),
    ("UPDATE audit SET seq = 999999999999 WHERE seq = 6", "6..999999999998 missing before record 999999999999"),
])
def test_a_huge_seq_is_a_gap_found_at_once(store: SqliteStore, clock: FakeClock, sql: str, message: str) -> None:
    # The gap used to be walked number by number: hours, and memory, for one edited head.
    trail = fill(store, clock)
    tamper(store, sql)
    found: list[Problem] = []
    walker = threading.Thread(target=lambda: found.extend(trail.verify()), daemon=True)
    walker.start()
    walker.join(10.0)
    assert not walker.is_alive(), "verify walked the gap"
    assert any(message in p.message for p in found)


@pytest.mark.both_stores
def test_encrypted_prompt_round_trip_and_purge(store: SqliteStore, clock: FakeClock) -> None:
    key = load_key(new_key())
    assert key is not None and len(key) == 32
    trail = AuditTrail(store, clock, PromptCipher(key), retention_s=3600)
    trail.append(status=200, reason="ok", request_id="r1", prompt="secret plans for the heist")
    store.flush()
    (rec,) = store.audit_records()
    assert rec.prompt is not None and b"heist" not in rec.prompt
    assert trail.prompt_text(rec) == "secret plans for the heist"
    with pytest.raises(InvalidTag):  # bound to its request id
        PromptCipher(key).decrypt(rec.prompt, "r2")
    clock.advance(1800)
    assert trail.purge() == 0
    clock.advance(1801)
    assert trail.purge() == 1
    (rec,) = store.audit_records()
    assert rec.prompt is None and rec.prompt_digest is not None
    assert trail.verify() == []  # the chain covers the digest, not the purged text


@pytest.mark.both_stores
def test_prompt_not_kept_without_retention_policy(store: SqliteStore, clock: FakeClock) -> None:
    trail = AuditTrail(store, clock, PromptCipher(load_key(new_key()) or b""), retention_s=None)
    trail.append(status=200, reason="ok", request_id="r1", prompt="hello")
    store.flush()
    (rec,) = store.audit_records()
    assert rec.prompt is None and rec.prompt_digest is None


@pytest.mark.both_stores
def test_tampered_prompt_blob_is_caught(store: SqliteStore, clock: FakeClock) -> None:
    trail = AuditTrail(store, clock, PromptCipher(load_key(new_key()) or b""), retention_s=3600)
    trail.append(status=200, reason="ok", request_id="r1", prompt="hello")
    store.flush()
    tamper(store, "UPDATE audit SET prompt = ? WHERE seq = 1", b"\0" * 40)
    assert kinds(trail) == [(1, "edited")]


@pytest.mark.both_stores
def test_export_has_no_ciphertext(store: SqliteStore, clock: FakeClock) -> None:
    trail = AuditTrail(store, clock, PromptCipher(load_key(new_key()) or b""), retention_s=3600)
    trail.append(status=200, reason="ok", request_id="r1", prompt="hello")
    store.flush()
    (line,) = list(export_jsonl(store.audit_records()))
    assert b'"prompt":null' in line and b'"prompt_digest":"' in line


@pytest.mark.both_stores
def test_rules_version_is_chained_and_older_records_keep_their_hashes(store: SqliteStore, clock: FakeClock) -> None:
    import hashlib

    import msgspec

    from gateway.tenancy.audit import record_hash

    trail = fill(store, clock, 2)
    clock.advance(1)
    trail.append(status=400, reason="security", tenant="acme", verdict="block", rules_version="overrides@1,markup@2",
                 request_id="req-x")
    store.flush()
    older, _, newest = store.audit_records()
    assert newest.rules_version == "overrides@1,markup@2" and older.rules_version is None
    # A record without a rules version or a chain name hashes exactly as before those fields existed;
    # the name, when there is one, is covered as a tagged pair.
    fields = (older.seq, older.time, older.tenant, older.token_id, older.client, older.model, older.status,
              older.reason, older.input_tokens, older.output_tokens, older.verdict, older.request_id,
              older.prompt_digest, older.prev_hash)
    unnamed = msgspec.structs.replace(older, chain="")
    assert record_hash(unnamed) == hashlib.sha256(msgspec.json.encode(fields)).hexdigest()
    named = fields + (("chain", older.chain),)
    assert record_hash(older) == older.hash == hashlib.sha256(msgspec.json.encode(named)).hexdigest()
    assert trail.verify() == []
    tamper(store, "UPDATE audit SET rules_version = 'overrides@0' WHERE seq = 3")
    assert kinds(trail) == [(3, "edited")]
