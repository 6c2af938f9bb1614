"""The PostgreSQL writer's rows as SQL text (postgres_literals.py): every value comes back from the
server exactly as it went in, none can end its literal, and a batch whose connection is lost after
its COMMIT went out is told in or out by its chain heads, never written twice."""

from __future__ import annotations

import math
import threading
from typing import Any

import psycopg
import pytest

from gateway.tenancy.postgres_literals import literal
from gateway.tenancy.postgres_store import PostgresStore
from gateway.tenancy.store import AuditRecord, UsageRow

TEXTS = ["", "plain", "it's", "''", "back\\slash", "\\'", "'\\", "E'x'", "$$ $tag$", "-- not a comment",
         "x'); DROP TABLE usage; --", "tab\tnew\nline\r", "\x01\x1f\x7f", "ünïcødé ✓ 𝄞", "\\x41", "%s %% %(x)s {0}"]
FLOATS = [0.0, -0.0, 0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, 1732821234.123456, -2.5e-7,
          math.inf, -math.inf]
INTS = [0, -1, 200, 2**62, -(2**63)]
BLOBS = [b"", b"\x00", b"\xff'\\\x00E'", bytes(range(256))]


@pytest.fixture
def conn(pg_url: str) -> Any:
    with psycopg.connect(pg_url, autocommit=True) as c:
        yield c


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_text_comes_back_exactly_whatever_standard_conforming_strings_says(conn: Any, conforming: str) -> None:
    conn.execute(f"SET standard_conforming_strings = {conforming}")
    for text in TEXTS:
        assert conn.execute(f"SELECT {literal(text)}::text", prepare=False).fetchone()[0] == text
    for blob in BLOBS:
        assert conn.execute(f"SELECT {literal(blob)}::bytea", prepare=False).fetchone()[0] == blob


def test_numbers_and_null_come_back_exactly(conn: Any) -> None:
    for value in FLOATS:
        got = conn.execute(f"SELECT {literal(value)}::float8", prepare=False).fetchone()[0]
        assert got == value and math.copysign(1, got) == math.copysign(1, value)
    assert math.isnan(conn.execute(f"SELECT {literal(math.nan)}::float8", prepare=False).fetchone()[0])
    for value in INTS:
        assert conn.execute(f"SELECT {literal(value)}::bigint", prepare=False).fetchone()[0] == value
    assert conn.execute(f"SELECT {literal(None)}::text", prepare=False).fetchone()[0] is None


def test_a_nul_in_text_and_a_value_of_no_sql_type_are_refused() -> None:
    with pytest.raises(psycopg.DataError):
        literal("a\x00b")
    for value in (True, [1], {"a": 1}):
        with pytest.raises(TypeError):
            literal(value)


def _rows(i: int, chain: str = "c") -> tuple[UsageRow, AuditRecord]:
    awkward = TEXTS[i % len(TEXTS)]
    usage = UsageRow(request_id=f"r{i}{awkward}", time=1e9 + i / 3, tenant=awkward or "t", token_id="k",
                     model="qwen3:8b", input_tokens=i, cached_input_tokens=0, output_tokens=2, reasoning_tokens=1,
                     cost_eur=i * 1e-7, status=200, latency_ms=0.1)
    audit = AuditRecord(seq=i + 1, time=usage.time, tenant=usage.tenant, token_id="k", client=None, model="qwen3:8b",
                        status=200, reason="ok", input_tokens=i, output_tokens=2, request_id=usage.request_id,
                        prompt=BLOBS[i % len(BLOBS)] or None, prompt_digest="d", prev_hash=f"h{i}",
                        hash=f"h{i + 1}", chain=chain)
    return usage, audit


def test_a_batch_of_awkward_rows_is_stored_as_given(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        release = threading.Event()
        store.writer.submit(lambda conn: release.wait())  # holds the writer: the rows make one batch
        rows = [_rows(i) for i in range(len(TEXTS) * 2)]
        futures = [store.record(u, a) for u, a in rows]
        release.set()
        assert [future.result() for future in futures] == [None] * len(rows)
        assert list(store.audit_records()) == [a for _, a in rows]
        stored = {u.request_id: u for u in store.usage(None, 0.0)}
        assert stored == {u.request_id: u for u, _ in rows}
        assert store.audit_heads() == {"c": (len(rows), f"h{len(rows)}")}
    finally:
        store.close()


class _Losing:
    """The writer's connection, lost at its next batch of rows: before sending it, or once the server
    has run it (its answer never read)."""

    def __init__(self, conn: psycopg.Connection, after: bool) -> None:
        self._conn, self._after = conn, after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, str) and query.startswith("INSERT INTO usage"):
            if self._after:
                self._conn.execute(query, *args, **kwargs)
            self._conn.pgconn.finish()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self._conn.execute(query, *args, **kwargs)


@pytest.mark.parametrize("after", [False, True], ids=["lost before it ran", "lost after it committed"])
def test_a_batch_whose_connection_is_lost_is_in_once(pg_url: str, after: bool) -> None:
    store = PostgresStore(pg_url)
    try:
        assert store.record(*_rows(0)).result() is None
        store.writer._conn = _Losing(store.writer._conn, after)  # type: ignore[assignment]
        assert store.record(*_rows(1)).result() is None  # rerun or found in: either way, resolved
        assert store.record(*_rows(2)).result() is None  # on the new connection
        assert [a.seq for a in store.audit_records()] == [1, 2, 3]
        assert len(store.usage(None, 0.0)) == 3 and store.file_lost() is None
    finally:
        store.close()
