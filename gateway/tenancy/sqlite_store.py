"""SQLite implementation of the Store: WAL, migrations versioned in code (migrations.py), one writer.

Writes go through a queue to a single writer thread, which commits them in batches (one
transaction for everything queued, up to `batch_max`), so a burst of finished requests costs one
commit, not one each. Each write resolves its Future only after its batch commits, so a caller that
waits on it knows the row survives a kill -9 of the process: in WAL mode a commit is in the OS's
hands once COMMIT returns, with the default synchronous=NORMAL (tens of microseconds). Power loss
can still take the last commits; synchronous=FULL (LLMAAS_DB_SYNC=FULL) closes that too, at the
price of an fsync per batch (milliseconds on this machine, paid in each response's latency).
A bad write fails alone, not its whole batch (the batch is replayed with a savepoint per write).
Reads use their own connection (WAL lets them run beside the writer).

Usage and audit rows (`record` with an audit record) take a shorter way on a file database: one
`os.write()` to the ledger journal (journal.py) makes them durable against a kill -9 and their
Future is returned already resolved; the writer commits them every `flush_interval_s`, and a read
of usage or audit commits what is pending first. Power loss can take journaled rows not yet
committed, as synchronous=NORMAL can take the last commits. Without a journal (":memory:", or a
second process on the database: the journal is the first one's), rows written from an event loop
are committed in a callback of that loop, one transaction per loop iteration (see `record`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

from gateway.tenancy.journal import SUFFIX, Journal, JournalBusy, frame
from gateway.tenancy.migrations import migrate
from gateway.tenancy.store import AuditRecord, TokenRecord, UsageRow

_TOKEN_COLS = [f for f in TokenRecord.__struct_fields__]
_USAGE_COLS = [f for f in UsageRow.__struct_fields__]
_AUDIT_COLS = [f for f in AuditRecord.__struct_fields__]
# Built once: record() is on every request's path.
_USAGE_SQL = f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) VALUES ({', '.join('?' * len(_USAGE_COLS))})"
_AUDIT_SQL = f"INSERT INTO audit ({', '.join(_AUDIT_COLS)}) VALUES ({', '.join('?' * len(_AUDIT_COLS))})"
_HEAD_SQL = "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_head', ?)"
_Op = Callable[[sqlite3.Connection], Any]
_Entry = tuple[UsageRow | None, AuditRecord]
_STOP = object()
_DRAIN = object()  # tells the writer to commit the journaled rows
log = logging.getLogger(__name__)


class _Sink:
    """Stands for a Future nobody waits on: a journaled row's caller was answered at its os.write."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False

    def set_result(self, value: object) -> None:
        pass

    def set_exception(self, exc: BaseException) -> None:
        # The rows stay in the journal (no truncation from now on): the next start replays them.
        self.failed = True
        log.error("ledger commit failed, rows kept in the journal: %s", exc)


_DONE: Future[None] = Future()
_DONE.set_result(None)
SYNC_ENV = "LLMAAS_DB_SYNC"


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str], synchronous: str | None = None, batch_max: int = 512,
                 journal: bool = True, flush_interval_s: float = 0.01) -> None:
        self.path = str(path)
        synchronous = (synchronous or os.environ.get(SYNC_ENV) or "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"{SYNC_ENV}: NORMAL, FULL or EXTRA, not {synchronous!r}")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._batch_max = batch_max
        self._writer_conn = self._connect(synchronous)
        migrate(self._writer_conn)
        # Usage and audit rows go to the journal (see journal.py) and reach SQLite in batches, at
        # most `flush_interval_s` after they were written; reads commit what is pending first.
        self._journal: Journal | None = None
        self._pending: list[_Entry] = []
        self._jlock = threading.Lock()
        self._wake = threading.Event()
        self._flush_interval = flush_interval_s
        self._journaled = self._journal_committed = 0
        self._sink = _Sink()
        self._taken: int | None = None  # the journal file of the batch being committed
        # FULL and EXTRA promise power-loss safety, which the journal (no fsync) does not give:
        # their rows take the direct path, a synchronous commit each.
        if journal and self.path != ":memory:" and synchronous == "NORMAL":
            try:
                self._journal = Journal(self.path + SUFFIX)
            except JournalBusy:
                pass  # another process owns it: write directly, replay nothing
            else:
                self._replay(self._journal)
        self._reader = self._connect(synchronous)
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The audit head ("seq:hash") the writer's current batch moves to; only the writer touches these.
        self._head: str | None = None
        self._committed_head: str | None = None
        # record() called on an event loop commits in a callback of that loop instead (see record).
        self._loop_batches: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Future[Any]]]] = {}
        self._write_lock = threading.Lock()  # one committer at a time on the one write connection
        self._thread = threading.Thread(target=self._write_loop, name="llmaas-store-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so batching is explicit.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    # -- the writer -------------------------------------------------------------------------------
    def _submit(self, op: _Op) -> Future[Any]:
        if self._closed:
            raise RuntimeError("store is closed")
        future: Future[Any] = Future()
        self._queue.put((op, future))
        return future

    def _replay(self, journal: Journal) -> None:
        """Inserts the journaled rows a killed process had not committed, in chain order."""
        entries = journal.read()
        conn = self._writer_conn
        if entries:
            # Committed entries are among the last rows: the journal holds what came after its last truncation.
            known = {h for (h,) in conn.execute(
                "SELECT hash FROM audit WHERE id > (SELECT COALESCE(MAX(id), 0) FROM audit) - ?",
                (len(entries) + 1024,))}
            missing = [(u, a) for u, a in entries if a.hash not in known]
            if missing:
                row = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
                head_seq = int(row[0].partition(":")[0]) if row else 0
                conn.execute("BEGIN IMMEDIATE")
                last = _insert_entries(conn, missing)
                if last.seq > head_seq:
                    conn.execute(_HEAD_SQL, (f"{last.seq}:{last.hash}",))
                conn.execute("COMMIT")
                log.warning("replayed %d ledger row(s) from %s", len(missing), journal.path)
        journal.truncate()

    def _take_pending(self) -> list[tuple[_Op, Any]]:
        with self._jlock:
            entries, self._pending = self._pending, []
            if entries:  # this batch's file is truncated once it commits (see _journal_done)
                self._taken = self._journal.switch()  # type: ignore[union-attr]
        if not entries:
            return []

        def op(conn: sqlite3.Connection) -> None:
            last = _insert_entries(conn, entries)
            self._head = f"{last.seq}:{last.hash}"  # written with the batch (see _commit)
        return [(op, self._sink)]

    def _write_loop(self) -> None:
        conn = self._writer_conn
        while True:
            item = self._queue.get()
            if item is _DRAIN:  # let the batch fill: its rows are durable in the journal already
                self._wake.wait(self._flush_interval)
                self._wake.clear()
            batch: list[tuple[_Op, Any]] = []
            drained = stop = False
            while True:
                if item is _STOP:
                    stop = True
                    break
                if item is _DRAIN:
                    batch.extend(self._take_pending())
                    drained = True
                else:
                    batch.append(item)
                if len(batch) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with self._write_lock:
                    self._commit(conn, batch)
            if drained:
                self._journal_done()
            if stop:
                return

    def _journal_done(self) -> None:
        assert self._journal is not None
        with self._jlock:
            self._journal_committed = self._journaled - len(self._pending)
            # The file of the committed batch: everything in it is in SQLite now. A kill between
            # the commit and the truncation leaves entries that the replay finds already there.
            if self._taken is not None and not self._sink.failed:
                self._journal.truncate(self._taken)
                self._taken = None

    def _flush_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._loop_batches.pop(loop, None)
        if batch:
            with self._write_lock:
                self._commit(self._writer_conn, batch)

    def _write_head(self, conn: sqlite3.Connection) -> None:
        if self._head is not None and self._head != self._committed_head:
            conn.execute(_HEAD_SQL, (self._head,))

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[_Op, Future[Any]]]) -> None:
        # Fast path: the whole batch in one transaction. Should a write fail, the batch is rolled
        # back and replayed with one savepoint per write, so that the bad write fails alone.
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = [op(conn) for op, _ in batch]
            self._write_head(conn)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._head = self._committed_head
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._head = self._committed_head
            for _, future in batch:
                future.set_exception(exc)
            return
        else:
            self._committed_head = self._head
            for (_, future), value in zip(batch, values):
                future.set_result(value)
            return
        self._commit_one_by_one(conn, batch)

    def _commit_one_by_one(self, conn: sqlite3.Connection, batch: list[tuple[_Op, Future[Any]]]) -> None:
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((future, op(conn), None))
                    conn.execute("RELEASE op")
                except sqlite3.Error as exc:  # this write alone fails; the batch goes on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((future, None, exc))
            self._write_head(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._head = self._committed_head
            for _, future in batch:
                future.set_exception(exc)
            return
        self._committed_head = self._head
        for future, value, error in results:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    def flush(self) -> None:
        """Waits until everything queued so far by this thread is committed."""
        try:
            self._flush_loop(asyncio.get_running_loop())  # its callback may not have run yet
        except RuntimeError:
            pass
        if self._journal is not None:
            self._queue.put(_DRAIN)
            self._wake.set()
        self._submit(lambda conn: None).result()

    def _sync(self) -> None:
        """Read-your-writes: journaled rows not yet in SQLite are committed before a read."""
        if self._journaled != self._journal_committed and not self._closed:
            self.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for loop in list(self._loop_batches):  # what loops queued and have not committed yet
            self._flush_loop(loop)
        if self._journal is not None:
            self._queue.put(_DRAIN)
            self._wake.set()
        self._queue.put(_STOP)
        self._thread.join()
        if self._journal is not None:
            self._journal.close()
        self._writer_conn.close()
        self._reader.close()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    # -- meta ---------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

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
        rows = self._read(sql + " WHERE tenant = ? ORDER BY created_at", (tenant,)) if tenant else \
            self._read(sql + " ORDER BY tenant, created_at")
        return [self._token(r) for r in rows]

    # -- usage and audit ----------------------------------------------------------------------------
    def record(self, usage: UsageRow | None, audit: AuditRecord | None) -> Future[None]:
        """The usage row and the audit record of one request, in one transaction."""
        if audit is not None and self._journal is not None:
            return self._write_journal(usage, audit)

        def op(conn: sqlite3.Connection) -> None:
            if usage is not None:
                conn.execute(_USAGE_SQL, msgspec.structs.astuple(usage))
            if audit is not None:
                conn.execute(_AUDIT_SQL, msgspec.structs.astuple(audit))
                # The head is kept beside the chain so that a cut tail (deleted last records)
                # shows; written once per batch, in the batch's transaction (see _commit).
                self._head = f"{audit.seq}:{audit.hash}"

        # Without a journal (":memory:", or another process owns it): on an event loop, the rows of
        # one loop iteration are committed together in a callback of that loop: waking the writer thread for each request costs more (two thread switches,
        # which on a busy machine means hundreds of microseconds) than the commit itself (tens).
        # A process writes its records either from one loop or from plain threads, not both: the
        # two paths keep their own order, not each other's.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._submit(op)
        if self._closed:
            raise RuntimeError("store is closed")
        future: Future[None] = Future()
        batch = self._loop_batches.get(loop)
        if batch is None:
            batch = self._loop_batches[loop] = []
            loop.call_soon(self._flush_loop, loop)
        batch.append((op, future))
        if len(batch) >= self._batch_max:
            self._flush_loop(loop)
        return future

    def _write_journal(self, usage: UsageRow | None, audit: AuditRecord) -> Future[None]:
        if self._closed:
            raise RuntimeError("store is closed")
        data = frame(usage, audit)
        with self._jlock:  # journal order is chain order is commit order
            self._journal.write(data)  # type: ignore[union-attr]
            self._pending.append((usage, audit))
            self._journaled += 1
            first = len(self._pending) == 1
        if first:  # one wake-up of the writer per batch, not per row
            self._queue.put(_DRAIN)
        return _DONE

    def usage(self, tenant: str | None, since: float, until: float | None = None) -> list[UsageRow]:
        self._sync()
        where, params = ["time >= ?"], [since]
        if until is not None:
            where.append("time < ?")
            params.append(until)
        if tenant:
            where.append("tenant = ?")
            params.append(tenant)
        rows = self._read(f"SELECT {', '.join(_USAGE_COLS)} FROM usage WHERE {' AND '.join(where)} ORDER BY time, id",
                          tuple(params))
        return [UsageRow(**dict(zip(_USAGE_COLS, r))) for r in rows]

    def cost_since(self, tenant: str, since: float) -> float:
        self._sync()
        rows = self._read("SELECT COALESCE(SUM(cost_eur), 0) FROM usage WHERE tenant = ? AND time >= ?", (tenant, since))
        return float(rows[0][0])

    def audit_records(self) -> Iterator[AuditRecord]:
        # Stored order (insertion id), not seq order: a reordering must show up to the verifier.
        self._sync()
        rows = self._read(f"SELECT {', '.join(_AUDIT_COLS)} FROM audit ORDER BY id")
        for r in rows:
            yield AuditRecord(**dict(zip(_AUDIT_COLS, r)))

    def audit_head(self) -> tuple[int, str]:
        self._sync()
        value = self.get_meta("audit_head")
        if value is None:
            return 0, ""
        seq, _, digest = value.partition(":")
        return int(seq), digest

    def purge_prompts(self, before: float) -> Future[int]:
        return self._submit(lambda conn: conn.execute(
            "UPDATE audit SET prompt = NULL WHERE prompt IS NOT NULL AND time < ?", (before,)).rowcount)


def _insert_entries(conn: sqlite3.Connection, entries: list[_Entry]) -> AuditRecord:
    """Journaled rows, two executemany for the lot (a third of the cost of a statement each); a row
    SQLite refuses is logged and skipped, not allowed to sink the rest. Returns the last record."""
    conn.execute("SAVEPOINT rows")
    try:
        conn.executemany(_USAGE_SQL, [msgspec.structs.astuple(u) for u, _ in entries if u is not None])
        conn.executemany(_AUDIT_SQL, [msgspec.structs.astuple(a) for _, a in entries])
    except sqlite3.Error:
        conn.execute("ROLLBACK TO rows")
        for usage, audit in entries:
            try:
                if usage is not None:
                    conn.execute(_USAGE_SQL, msgspec.structs.astuple(usage))
                conn.execute(_AUDIT_SQL, msgspec.structs.astuple(audit))
            except sqlite3.Error as exc:
                log.error("ledger row %s (audit seq %d) refused by SQLite: %s", audit.request_id, audit.seq, exc)
    conn.execute("RELEASE rows")
    return entries[-1][1]
