"""The PostgreSQL store's one writer: a thread that commits queued writes in batches, one
transaction a batch, as sqlite_writer.py does for SQLite.

Each write resolves its Future only after its batch commits, so a caller that waits on it knows the
row is in the database, whatever becomes of this process. Writes queue while a batch commits and
make the next batch: under load a commit's round trip is shared by many requests. A request's rows
(usage row and audit record) are queued as data, not as a function: a batch of them goes out as one
simple query of multi-row inserts (postgres_literals.py), one round trip and one transaction.

Failures, by kind:
- a bad write (a constraint, a mistyped statement) fails alone: the batch is replayed with a
  savepoint per write;
- a deadlock with another gateway's batch (two token writes, taken in opposite orders) rolls the
  batch back whole, and it is run again;
- a connection lost before COMMIT (the server restarted, an idle connection cut) is opened again and
  the batch run on the new one; lost with its COMMIT sent, the batch may or may not be in: the chain
  heads it moved, read on a new connection, tell which (see `_landed`); a batch that moved none (a
  token write) cannot tell, and its futures fail, so that no caller is told a row is stored that may
  not be. `lost` says why the database cannot be reached while a new connection cannot be had, and
  None again after the next commit.

The audit heads ("seq:hash" of each chain, kept in `meta` so that a cut tail shows) move with the
batch that holds their records, in its transaction.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors

from gateway.tenancy.postgres_literals import heads_sql, rows_sql
from gateway.tenancy.sqlite_writer import head_key
from gateway.tenancy.store import AuditRecord, UsageRow

Op = Callable[[psycopg.Connection], Any]
_USAGE_COLS = list(UsageRow.__struct_fields__)
_AUDIT_COLS = list(AuditRecord.__struct_fields__)
USAGE_SQL = f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) VALUES ({', '.join(['%s'] * len(_USAGE_COLS))})"
AUDIT_SQL = f"INSERT INTO audit ({', '.join(_AUDIT_COLS)}) VALUES ({', '.join(['%s'] * len(_AUDIT_COLS))})"
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
        # Requests' rows only (the hot path): one simple query, the rows and the heads in three
        # statements the server runs as one transaction (postgres_literals.py), a round trip a batch.
        # Other writes read their results (a row count) as they go, in a transaction of their own.
        rows_only = all(isinstance(work, Rows) for work, _ in batch)
        for attempt in range(_ATTEMPTS):
            sent = False
            try:
                conn = self._connection()
                self._heads = {}
                if rows_only:
                    text = ";".join(self._rows_sql([work for work, _ in batch]) + heads_sql(self._heads))
                    sent = True
                    conn.execute(text, prepare=False)
                    values = [None] * len(batch)
                else:
                    with conn.transaction():
                        values = self._apply(conn, [work for work, _ in batch])
                        self._write_heads(conn)
                        sent = True  # the block's end sends COMMIT
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
                if sent:  # lost with its COMMIT sent: the heads it moved tell whether it is in
                    landed = self._landed()
                    if landed is None:
                        break
                    if landed:
                        self._resolve(batch, [None] * len(batch))
                        return
                continue  # nothing of it was committed: again, on a new connection
            except psycopg.Error:
                self._commit_one_by_one(batch)
                return
            except BaseException as exc:
                error = exc
                break
            else:
                self._resolve(batch, values)
                return
        assert error is not None
        log.error("a batch of %d write(s) failed: %s", len(batch), error)
        for _, future in batch:
            future.set_exception(error)

    def _resolve(self, batch: list[_Item], values: list[Any]) -> None:
        self.lost = None
        for (_, future), value in zip(batch, values):
            future.set_result(value)

    def _landed(self) -> bool | None:
        """Whether the batch whose connection was lost after its COMMIT went out is in the database,
        read on a new connection from the chain heads it moved: each chain is this process's own, so
        its head is this batch's if and only if the batch committed. None when the batch moved no
        head (a token write alone) or no connection can be had: then nobody can tell."""
        if not self._heads:
            return None
        try:
            found = self._connection().execute("SELECT key, value FROM meta WHERE key = ANY(%s)",
                                               (list(self._heads),)).fetchall()
        except psycopg.OperationalError:
            return None
        return dict(found) == self._heads  # type: ignore[arg-type]

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
        """Runs the writes in order, requests' rows gathered into runs of multi-row inserts."""
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

    def _rows_sql(self, run: list[Rows]) -> list[str]:
        """The statements of a run of requests' rows; the chains' heads move with them."""
        audits = [r.audit for r in run if r.audit is not None]
        for a in audits:
            self.set_head(a.chain, f"{a.seq}:{a.hash}")
        return rows_sql([r.usage for r in run if r.usage is not None], audits)

    def _insert(self, conn: psycopg.Connection, run: list[Rows]) -> None:
        if run:
            conn.execute(";".join(self._rows_sql(run)), prepare=False)

    def _write_heads(self, conn: psycopg.Connection) -> None:
        for statement in heads_sql(self._heads):
            conn.execute(statement, prepare=False)
