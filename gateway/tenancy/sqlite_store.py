"""SQLite implementation of the Store: WAL, migrations versioned in code (migrations.py), one
writer (sqlite_writer.py: the writer thread, batched commits and the ledger journal's rows).

Reads use their own connection (WAL lets them run beside the writer); reads of usage and audit
commit the journaled rows first (read-your-writes). Usage and audit rows (`record` with an audit
record) go to the ledger journal on a file database: one copy into it makes them durable against a
kill -9. Without a journal (":memory:", or a second process on the database: the journal is the
first one's), rows written from an event loop are committed in a callback of that loop, one
transaction per loop iteration, and rows written from other threads by the writer thread.
FULL and EXTRA synchronous modes take the direct path too: they promise power-loss safety, which
the journal (no fsync) does not give.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

from gateway.tenancy import lane_ledger
from gateway.tenancy.audit import AuditTrail
from gateway.tenancy.clock import SystemClock
from gateway.tenancy.history import HistoryEntry, HistoryQuery, history_where, sql_glob
from gateway.tenancy.journal import SUFFIX, Journal, JournalBusy
from gateway.tenancy.migrations import migrate
from gateway.tenancy.sqlite_writer import AUDIT_SQL, USAGE_SQL, Op, SqliteWriter, parse_heads
from gateway.tenancy.store import AuditRecord, PolicyRecord, TokenRecord, UsageRow

_TOKEN_COLS = list(TokenRecord.__struct_fields__)
_USAGE_COLS = list(UsageRow.__struct_fields__)
_AUDIT_COLS = list(AuditRecord.__struct_fields__)
SYNC_ENV = "LLMAAS_DB_SYNC"
# A record's ledger row shares its tenant, time and request id (see history.py); MAX(id): one row
# per record even if a client reused its request id at the same instant.
_HISTORY_SQL = """
    SELECT a.id, a.time, a.request_id, a.tenant, a.token_id, a.model, a.status, a.reason,
           COALESCE(u.input_tokens, a.input_tokens), COALESCE(u.cached_input_tokens, 0),
           COALESCE(u.output_tokens, a.output_tokens), COALESCE(u.reasoning_tokens, 0), COALESCE(u.cost_eur, 0.0),
           u.latency_ms, a.verdict
    FROM audit a LEFT JOIN usage u ON u.id = (
        SELECT MAX(id) FROM usage WHERE tenant = a.tenant AND time = a.time AND request_id = a.request_id)
    WHERE {where} ORDER BY a.time DESC, a.id DESC LIMIT ?"""
_HISTORY_FIELDS = list(HistoryEntry.__struct_fields__)


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str], synchronous: str | None = None, batch_max: int = 512,
                 journal: bool = True, flush_interval_s: float = 0.01, journal_wait_s: float = 0.0,
                 hold_journal: bool = True) -> None:
        """journal_wait_s: how long to wait for the ledger journal's lock (a gateway waits out a CLI
        command that holds it; without the journal its native lane would stay off). hold_journal
        False (the CLI): the journal is taken only for the replays at open, then let go, so that a
        gateway starting while a long command runs (an audit export) still gets it."""
        self.path = str(path)
        synchronous = (synchronous or os.environ.get(SYNC_ENV) or "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"{SYNC_ENV}: NORMAL, FULL or EXTRA, not {synchronous!r}")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        writer_conn = self._connect(synchronous)
        migrate(writer_conn)
        ledger_journal: Journal | None = None
        if journal and self.path != ":memory:":
            try:
                ledger_journal = Journal(self.path + SUFFIX, journal_wait_s)
            except JournalBusy:
                pass  # another process owns it: write directly, replay nothing
        self.writer = SqliteWriter(writer_conn, ledger_journal, batch_max, flush_interval_s)
        self._file = _file_identity(self.path)  # what the connections opened, to notice it replaced
        self._reader = self._connect(synchronous)
        self._read_lock = threading.Lock()
        if ledger_journal is not None:
            # The owner of the journal: no gateway's native lane is writing its own journal either,
            # so what a killed one left there is recorded now, chained after the last record.
            lane_ledger.replay(self, AuditTrail(self, SystemClock()), self.path + lane_ledger.SUFFIX)
            # Under FULL or EXTRA each batch is committed with an fsync, so no row needs the journal
            # past the replays of what an earlier gateway under NORMAL left there.
            if not hold_journal or synchronous != "NORMAL":
                self.writer.release_journal()

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so batching is explicit.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _submit(self, op: Op) -> Future[Any]:
        return self.writer.submit(op)

    def flush(self) -> None:
        """Waits until everything queued so far by this thread is committed."""
        self.writer.flush()

    def close(self) -> None:
        if self.writer.closed:
            return
        self.writer.close()
        self._reader.close()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    # -- meta ---------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def tokens_version(self) -> int:
        """Moves whenever a token is written, by any process (a trigger counts the changes)."""
        return int(self.get_meta("tokens_version") or 0)

    def set_meta_once(self, key: str, value: str) -> str:
        """Sets `key` unless some process set it first; returns the value that won."""
        def op(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
        return self._submit(op).result()

    # -- tokens -------------------------------------------------------------------------------------
    def put_token(self, token: TokenRecord) -> Future[None]:
        row = tuple(msgspec.json.encode(v).decode() if f == "models" else v
                    for f, v in zip(_TOKEN_COLS, msgspec.structs.astuple(token)))
        sql = f"INSERT OR REPLACE INTO tokens ({', '.join(_TOKEN_COLS)}) VALUES ({', '.join('?' * len(row))})"
        return self._submit(lambda conn: conn.execute(sql, row) and None)

    def rotate_token(self, old: TokenRecord, new: TokenRecord) -> Future[bool]:
        row = tuple(msgspec.json.encode(v).decode() if f == "models" else v
                    for f, v in zip(_TOKEN_COLS, msgspec.structs.astuple(new)))
        insert = f"INSERT INTO tokens ({', '.join(_TOKEN_COLS)}) VALUES ({', '.join('?' * len(row))})"

        def op(conn: sqlite3.Connection) -> bool:
            # The compare-and-set that makes one successor per token across processes (each one's
            # rotate lock only orders its own threads).
            moved = conn.execute("UPDATE tokens SET rotated_to = ?, expires_at = ? WHERE id = ? "
                                 "AND rotated_to IS NULL AND revoked_at IS NULL",
                                 (old.rotated_to, old.expires_at, old.id)).rowcount
            if moved:
                conn.execute(insert, row)
            return bool(moved)
        return self._submit(op)

    def revoke_token(self, token_id: str, at: float) -> Future[bool]:
        # An update of the one column, not put_token's whole row: a rotation another process wrote
        # since this one read the token is kept.
        return self._submit(lambda conn: bool(conn.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, token_id)).rowcount))

    @staticmethod
    def _token(row: tuple[Any, ...]) -> TokenRecord:
        values = dict(zip(_TOKEN_COLS, row))
        values["models"] = msgspec.json.decode(values["models"])
        return TokenRecord(**values)

    def get_token(self, token_id: str) -> TokenRecord | None:
        rows = self._read(f"SELECT {', '.join(_TOKEN_COLS)} FROM tokens WHERE id = ?", (token_id,))
        return self._token(rows[0]) if rows else None

    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        sql = f"SELECT {', '.join(_TOKEN_COLS)} FROM tokens"
        rows = self._read(sql + " WHERE tenant = ? ORDER BY created_at", (tenant,)) if tenant is not None else \
            self._read(sql + " ORDER BY tenant, created_at")
        return [self._token(r) for r in rows]

    # -- security policies --------------------------------------------------------------------------
    def put_policy(self, record: PolicyRecord) -> Future[None]:
        row = (record.tenant, msgspec.json.encode(record.modes).decode(), record.updated_at)
        return self._submit(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO security_policies (tenant, modes, updated_at) VALUES (?, ?, ?)", row) and None)

    def delete_policy(self, tenant: str) -> Future[bool]:
        return self._submit(lambda conn: conn.execute(
            "DELETE FROM security_policies WHERE tenant = ?", (tenant,)).rowcount > 0)

    def policies(self) -> list[PolicyRecord]:
        rows = self._read("SELECT tenant, modes, updated_at FROM security_policies ORDER BY tenant")
        return [PolicyRecord(tenant=t, modes=msgspec.json.decode(m), updated_at=u) for t, m, u in rows]

    # -- usage and audit ----------------------------------------------------------------------------
    def record(self, usage: UsageRow | None, audit: AuditRecord | None) -> Future[None]:
        """The usage row and the audit record of one request, in one transaction."""
        writer = self.writer
        if audit is not None and writer.journal is not None:
            return writer.append(usage, audit)

        def op(conn: sqlite3.Connection) -> None:
            if usage is not None:
                conn.execute(USAGE_SQL, msgspec.structs.astuple(usage))
            if audit is not None:
                conn.execute(AUDIT_SQL, msgspec.structs.astuple(audit))
                writer.move_head(audit)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return writer.submit(op)
        return writer.submit_on_loop(op, loop)

    def insert_rows(self, usage_rows: list[tuple[Any, ...]], audit_rows: list[tuple[Any, ...]], chain: str,
                    head: str) -> None:
        """Requests' rows durable elsewhere already (the native lane's journal), as tuples in column
        order, committed now in one transaction after any journaled rows still pending, with the
        head ("seq:hash") they move their audit chain to; raises when the commit fails."""
        writer = self.writer

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(USAGE_SQL, usage_rows)
            conn.executemany(AUDIT_SQL, audit_rows)
            writer.set_head(chain, head)

        writer.commit_now(op)

    def usage(self, tenant: str | None, since: float, until: float | None = None) -> list[UsageRow]:
        self.writer.sync()
        where, params = ["time >= ?"], [since]
        if until is not None:
            where.append("time < ?")
            params.append(until)
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        rows = self._read(f"SELECT {', '.join(_USAGE_COLS)} FROM usage WHERE {' AND '.join(where)} ORDER BY time, id",
                          tuple(params))
        return [UsageRow(**dict(zip(_USAGE_COLS, r))) for r in rows]

    def cost_since(self, tenant: str, since: float) -> float:
        self.writer.sync()
        rows = self._read("SELECT COALESCE(SUM(cost_eur), 0) FROM usage WHERE tenant = ? AND time >= ?", (tenant, since))
        return float(rows[0][0])

    def has_audit_record(self, tenant: str | None, time: float, request_id: str) -> bool:
        """Whether the record of this request, ended at this instant, is in (replays ask it)."""
        self.writer.sync()
        return bool(self._read("SELECT 1 FROM audit WHERE tenant IS ? AND time = ? AND request_id = ? LIMIT 1",
                               (tenant, time, request_id)))

    def file_lost(self) -> str | None:
        """Why the database this store writes is no longer at its path (deleted, or another file put
        there), else None. SQLite goes on writing the file it opened, which then vanishes at exit."""
        if self._file is None:
            return None
        now = _file_identity(self.path)
        if now == self._file:
            return None
        what = "deleted" if now is None else "replaced by another file"
        return (f"the database {self.path} was {what} while this process ran: what it records now is lost when it "
                f"stops; restart the gateway to record into the database at that path")

    @property
    def journaled(self) -> bool:
        """Whether usage rows are durable at their journal copy (this process owns the journal)."""
        return self.writer.journal is not None

    def audit_records(self) -> Iterator[AuditRecord]:
        # Stored order (insertion id), not seq order: a reordering must show up to the verifier.
        self.writer.sync()
        rows = self._read(f"SELECT {', '.join(_AUDIT_COLS)} FROM audit ORDER BY id")
        for r in rows:
            yield AuditRecord(**dict(zip(_AUDIT_COLS, r)))

    def audit_heads(self) -> dict[str, tuple[int, str]]:
        self.writer.sync()
        return parse_heads(self._read(
            "SELECT key, value FROM meta WHERE key = 'audit_head' OR key GLOB 'audit_head:*'"))

    def history(self, query: HistoryQuery) -> list[HistoryEntry]:
        """Newest first, at most `query.limit` entries (see history.py)."""
        self.writer.sync()
        where, params = history_where(query, "?", "GLOB", sql_glob)
        rows = self._read(_HISTORY_SQL.format(where=" AND ".join(where)), (*params, query.limit))
        return [HistoryEntry(**dict(zip(_HISTORY_FIELDS, r))) for r in rows]

    def purge_prompts(self, before: float) -> Future[int]:
        return self._submit(lambda conn: conn.execute(
            "UPDATE audit SET prompt = NULL WHERE prompt IS NOT NULL AND time < ?", (before,)).rowcount)


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None for none (or an in-memory database)."""
    if path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
