"""The PostgreSQL store's one writer: a thread that commits queued writes in batches, one
transaction a batch, as sqlite_writer.py does for SQLite.

Each write resolves its Future only after its batch commits, so a caller that waits on it knows the
row is in the database, whatever becomes of this process. Writes queue while a batch commits and
make the next batch: under load a commit's round trips are shared by many requests. A request's
rows (usage row and audit record) are queued as data, not as a function: the rows of consecutive
requests go in with one `executemany` a table, which psycopg pipelines (a batch costs a few round
trips, not two a request, and a round trip to a database on another host is most of a commit).

Failures, by kind:
- a bad write (a constraint, a mistyped statement) fails alone: the batch is replayed with a
  savepoint per write;
- a deadlock with another gateway's batch (two token writes, taken in opposite orders) rolls the
  batch back whole, and it is run again;
- a connection lost before COMMIT (the server restarted, an idle connection cut) is opened again and
  the batch run on the new one; lost during COMMIT, the batch may or may not be in: its futures fail,
  so that no caller is told a row is stored that may not be. `lost` says why the database cannot be
  reached while a new connection cannot be had, and None again after the next commit.

The audit heads ("seq:hash" of each chain, kept in `meta` so that a cut tail shows) move with the
batch that holds their records, in its transaction.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from psycopg import errors

from gateway.tenancy.sqlite_writer import head_key
from gateway.tenancy.store import AuditRecord, UsageRow

Op = Callable[[psycopg.Connection], Any]
_USAGE_COLS = list(UsageRow.__struct_fields__)
_AUDIT_COLS = list(AuditRecord.__struct_fields__)
USAGE_SQL = f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) VALUES ({', '.join(['%s'] * len(_USAGE_COLS))})"
AUDIT_SQL = f"INSERT INTO audit ({', '.join(_AUDIT_COLS)}) VALUES ({', '.join(['%s'] * len(_AUDIT_COLS))})"
_HEAD_SQL = "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
# Rolled back whole by the server, nothing in: the batch may simply run again.
_RETRIED = (errors.DeadlockDetected, errors.SerializationFailure)
_ATTEMPTS = 3
_STOP = object()
log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Rows:
    """A request's usage row and audit record, written in one transaction."""

    usage: UsageRow | None
    audit: AuditRecord | None


_Item = tuple[Op | Rows, Future[Any]]


class PostgresWriter:
    def __init__(self, connect: Callable[[], psycopg.Connection], describe: str, batch_max: int = 512) -> None:
        """connect: a new autocommit connection (the first is made now: an unreachable database
        fails the store's opening); describe: the database, for messages (no password)."""
        self._connect, self._describe = connect, describe
        self._conn: psycopg.Connection | None = connect()
        self._batch_max = batch_max
        self._heads: dict[str, str] = {}  # meta key -> "seq:hash", moved by the batch being run
        self.lost: str | None = None
        self._probe: Future[Any] | None = None
        self.closed = False
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="llmaas-pg-writer", daemon=True)
        self._thread.start()

    def submit(self, work: Op | Rows) -> Future[Any]:
        """Queues `work`; the Future resolves once its batch commits."""
        if self.closed:
            raise RuntimeError("store is closed")
        future: Future[Any] = Future()
        # Running from now on, so that it cannot be cancelled: a request whose client left cancels
        # what awaits it (asyncio.wrap_future), but its row is written all the same, and a cancelled
        # future would refuse its result (InvalidStateError, in the writer thread).
        future.set_running_or_notify_cancel()
        self._queue.put((work, future))
        return future

    def set_head(self, chain: str, head: str) -> None:
        """Called inside a write: the batch commits the chain's head ("seq:hash") with it."""
        self._heads[head_key(chain)] = head

    def probe(self) -> None:
        """Queues an empty transaction (unless the last one is still queued), which finds a connection
        that died while idle and sets `lost` if no new one can be had; nobody waits on it."""
        if not self.closed and (self._probe is None or self._probe.done()):
            self._probe = self.submit(lambda conn: None)

    def flush(self) -> None:
        """Waits until everything queued so far is committed."""
        self.submit(lambda conn: None).result()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self._conn is not None:
            self._conn.close()

    # -- committing -------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[_Item] = []
            while item is not _STOP:
                batch.append(item)
                if len(batch) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
            if item is _STOP:
                return

    def _connection(self) -> psycopg.Connection:
        """The write connection, made anew when the last one broke (OperationalError if it cannot be)."""
        if self._conn is not None and (self._conn.broken or self._conn.closed):
            self._conn.close()
            self._conn = None
        if self._conn is None:
            try:
                self._conn = self._connect()
            except psycopg.OperationalError as exc:
                self.lost = f"{self._describe} cannot be reached: {str(exc).strip()}"
                raise
        return self._conn

    def _commit(self, batch: list[_Item]) -> None:
        error: BaseException | None = None
        for attempt in range(_ATTEMPTS):
            committing = False
            try:
                conn = self._connection()
                self._heads = {}
                # Requests' rows only (the hot path): one pipeline, BEGIN, the inserts, the heads and
                # COMMIT sent without waiting on each other's answers, a round trip a batch instead
                # of one a statement. Other writes read their results (a row count) as they go.
                rows_only = all(isinstance(work, Rows) for work, _ in batch)
                with conn.pipeline() if rows_only else contextlib.nullcontext(), conn.transaction():
                    values = self._apply(conn, [work for work, _ in batch])
                    self._write_heads(conn)
                    committing = True  # the block's end sends COMMIT
            except _RETRIED as exc:
                error = exc
                continue
            except psycopg.OperationalError as exc:
                error = exc
                if self._conn is None:  # no connection to be had (`lost` says why)
                    break
                if not self._conn.broken:  # an error of the statements (a query canceled): the writes alone
                    self._commit_one_by_one(batch)
                    return
                if committing:  # lost during COMMIT: in or not, nobody can tell
                    break
                continue  # nothing of it was committed: again, on a new connection
            except psycopg.Error:
                self._commit_one_by_one(batch)
                return
            except BaseException as exc:
                error = exc
                break
            else:
                self.lost = None
                for (_, future), value in zip(batch, values):
                    future.set_result(value)
                return
        assert error is not None
        log.error("a batch of %d write(s) failed: %s", len(batch), error)
        for _, future in batch:
            future.set_exception(error)

    def _commit_one_by_one(self, batch: list[_Item]) -> None:
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn = self._connection()
            self._heads = {}
            with conn.transaction():
                for work, future in batch:
                    heads = dict(self._heads)
                    try:
                        with conn.transaction():  # a savepoint: this write alone fails
                            results.append((future, self._apply(conn, [work])[0], None))
                    except psycopg.Error as exc:
                        if conn.broken:
                            raise
                        self._heads = heads  # a record rolled back does not move its chain
                        results.append((future, None, exc))
                self._write_heads(conn)
        except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
            for _, future in batch:
                future.set_exception(exc)
            return
        self.lost = None
        for future, value, error in results:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    def _apply(self, conn: psycopg.Connection, works: list[Op | Rows]) -> list[Any]:
        """Runs the writes in order, requests' rows gathered into runs for executemany."""
        values: list[Any] = []
        run: list[Rows] = []
        for work in works:
            if isinstance(work, Rows):
                run.append(work)
                values.append(None)
                continue
            self._insert(conn, run)
            run = []
            values.append(work(conn))
        self._insert(conn, run)
        return values

    def _insert(self, conn: psycopg.Connection, run: list[Rows]) -> None:
        if not run:
            return
        usage = [msgspec.structs.astuple(r.usage) for r in run if r.usage is not None]
        audits = [r.audit for r in run if r.audit is not None]
        with conn.cursor() as cur:
            if usage:
                cur.executemany(USAGE_SQL, usage)
            if audits:
                cur.executemany(AUDIT_SQL, [msgspec.structs.astuple(a) for a in audits])
        for a in audits:
            self.set_head(a.chain, f"{a.seq}:{a.hash}")

    def _write_heads(self, conn: psycopg.Connection) -> None:
        if self._heads:
            with conn.cursor() as cur:
                cur.executemany(_HEAD_SQL, sorted(self._heads.items()))
