"""The SQLite store's one writer: a thread that commits queued writes in batches, and the ledger
journal's rows that it commits behind their callers' backs.

Writes go through a queue to the writer thread, which commits them in batches (one transaction for
everything queued, up to `batch_max`), so a burst of finished requests costs one commit, not one
each. Each write resolves its Future only after its batch commits, so a caller that waits on it
knows the row survives a kill -9 of the process: in WAL mode a commit is in the OS's hands once
COMMIT returns, with the default synchronous=NORMAL (tens of microseconds). Power loss can still
take the last commits; synchronous=FULL (LLMAAS_DB_SYNC=FULL) closes that too, at the price of an
fsync per batch (milliseconds on this machine, paid in each response's latency). A bad write fails
alone, not its whole batch (the batch is replayed with a savepoint per write).

Usage and audit rows take a shorter way when there is a journal (journal.py): one copy into it
makes them durable against a kill -9 and their Future is returned already resolved (`append`); they
are committed `flush_interval_s` later, by a callback of the event loop that wrote them (by the
writer thread for rows written outside a loop), and the store's reads commit what is pending first
(`sync`). On the loop, not in the thread: a thread committing beside the event loop takes the GIL
back at each statement, and when both their cores are free (a quiet machine) each hand-over costs
the loop more than the inserts: the tenancy stage added 96-142 us of CPU a request that way, 60-69
with the commits on the loop (measured through Proxy.handle). The price is the loop's pause while
a batch commits (~0.3 ms plus ~10 us a row). Power loss can take journaled rows not yet committed,
as synchronous=NORMAL can take the last commits. Without a journal, rows written from an event
loop are committed in a callback of that loop, one transaction per loop iteration
(`submit_on_loop`).

The audit head ("seq:hash" of this process's chain, kept in `meta` beside the chain so that a cut
tail shows) moves with the batches: `move_head` inside a write, written once per batch in the
batch's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import msgspec

from gateway.tenancy.journal import Journal, frame
from gateway.tenancy.store import AuditRecord, UsageRow

Op = Callable[[sqlite3.Connection], Any]
_Entry = tuple[UsageRow | None, AuditRecord]
_USAGE_COLS = list(UsageRow.__struct_fields__)
_AUDIT_COLS = list(AuditRecord.__struct_fields__)
# Built once: every request's rows go through these.
USAGE_SQL = f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) VALUES ({', '.join('?' * len(_USAGE_COLS))})"
AUDIT_SQL = f"INSERT INTO audit ({', '.join(_AUDIT_COLS)}) VALUES ({', '.join('?' * len(_AUDIT_COLS))})"
_HEAD_SQL = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"


def head_key(chain: str) -> str:
    """Where a chain's head is kept in meta."""
    return f"audit_head:{chain}" if chain else "audit_head"


def parse_heads(rows: list[tuple[str, Any]]) -> dict[str, tuple[int, str]]:
    """Each chain's (seq, hash) from its head's (meta key, "seq:hash") row."""
    heads = {}
    for key, value in rows:
        seq, _, digest = str(value).partition(":")
        # An edited head that is not "seq:hash" reads as seq -1 with the whole value, for the
        # verifier to report (it is not this reader's to refuse).
        heads[key.partition(":")[2]] = (int(seq), digest) if seq.isascii() and seq.isdigit() else (-1, str(value))
    return heads


_STOP = object()
_DRAIN = object()  # tells the writer to commit the journaled rows
log = logging.getLogger(__name__)


class _Sink:
    """Stands for a Future nobody waits on: a journaled row's caller was answered at its journal copy."""

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


def _uncancellable() -> Future[Any]:
    """A write's Future, running from the start: a request whose client left cancels what awaits its
    row (asyncio.wrap_future), but the row is written all the same, and a cancelled Future would
    refuse its result (InvalidStateError) and leave the rest of its batch unresolved."""
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    return future


class SqliteWriter:
    def __init__(self, conn: sqlite3.Connection, journal: Journal | None, batch_max: int = 512,
                 flush_interval_s: float = 0.01) -> None:
        self._conn = conn
        self._batch_max = batch_max
        self.journal = journal
        self._pending: list[_Entry] = []
        self._jlock = threading.Lock()
        self._wake = threading.Event()
        self._flush_interval = flush_interval_s
        self._journaled = self._journal_committed = 0
        self._sink = _Sink()
        self._taken: int | None = None  # the journal file of the batch being committed
        if journal is not None:
            self._replay(journal)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The audit head (meta key, "seq:hash") the current batch moves to; only the committer
        # (under _write_lock) touches these.
        self._head: tuple[str, str] | None = None
        self._committed_head: tuple[str, str] | None = None
        self._loop_batches: dict[asyncio.AbstractEventLoop, list[tuple[Op, Future[Any]]]] = {}
        self._commit_loop: asyncio.AbstractEventLoop | None = None  # the loop that commits the journal's rows
        self._write_lock = threading.Lock()  # one committer at a time on the one write connection
        self._thread = threading.Thread(target=self._write_loop, name="llmaas-store-writer", daemon=True)
        self.closed = False
        self._thread.start()

    # -- what the store calls ---------------------------------------------------------------------
    def submit(self, op: Op) -> Future[Any]:
        """Queues `op` for the writer thread; the Future resolves once its batch commits."""
        if self.closed:
            raise RuntimeError("store is closed")
        future = _uncancellable()
        self._queue.put((op, future))
        return future

    def submit_on_loop(self, op: Op, loop: asyncio.AbstractEventLoop) -> Future[Any]:
        """Queues `op` to commit in a callback of `loop`, with the other writes of this iteration:
        waking the writer thread for each request costs more (two thread switches, which on a busy
        machine means hundreds of microseconds) than the commit itself (tens). A process writes its
        records either from one loop or from plain threads, not both: the two paths keep their own
        order, not each other's."""
        if self.closed:
            raise RuntimeError("store is closed")
        future = _uncancellable()
        batch = self._loop_batches.get(loop)
        if batch is None:
            batch = self._loop_batches[loop] = []
            loop.call_soon(self._flush_loop, loop)
        batch.append((op, future))
        if len(batch) >= self._batch_max:
            self._flush_loop(loop)
        return future

    def append(self, usage: UsageRow | None, audit: AuditRecord) -> Future[None]:
        """A request's rows into the journal: durable against a kill -9 when this returns."""
        assert self.journal is not None
        if self.closed:
            raise RuntimeError("store is closed")
        data = frame(usage, audit)
        with self._jlock:  # journal order is chain order is commit order
            self.journal.write(data)
            self._pending.append((usage, audit))
            self._journaled += 1
            first = len(self._pending) == 1
        if first:  # one commit scheduled per batch, not per row
            self._schedule_journal_commit()
        elif self._commit_loop is not None and self._commit_loop.is_closed():
            self._queue.put(_DRAIN)  # the loop that was to commit this batch ended first
        return _DONE

    def _schedule_journal_commit(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._commit_loop = None
            self._queue.put(_DRAIN)
            return
        self._commit_loop = loop
        loop.call_later(self._flush_interval, self._commit_journal)

    def _commit_journal(self) -> None:
        """The event loop's commit of the journaled rows (see the module docstring)."""
        with self._write_lock:
            if not self.closed:  # else close() has the writer thread commit them
                self._commit_taken(self._take_pending())

    def commit_now(self, op: Op) -> None:
        """Commits `op` at once, on this thread, after the journaled rows still pending (so the
        audit chain keeps its order in the table); raises what the commit raised."""
        future: Future[Any] = Future()
        with self._write_lock:
            if self.closed:
                raise RuntimeError("store is closed")
            taken = self._take_pending() if self.journal is not None else []
            self._commit(taken + [(op, future)])
            if self.journal is not None:
                self._journal_done()
        future.result()

    def release_journal(self) -> None:
        """Gives the journal up, its replay done and nothing journaled since: writes commit
        directly from now on, and another process (a gateway starting) may take it."""
        with self._write_lock, self._jlock:
            assert self._journaled == 0, "rows were journaled: the journal is needed until they commit"
            journal, self.journal = self.journal, None
        if journal is not None:
            journal.close()

    def set_head(self, chain: str, head: str) -> None:
        """move_head's "seq:hash", for rows written as tuples."""
        self._head = (head_key(chain), head)

    def move_head(self, audit: AuditRecord) -> None:
        """Called inside a write: the batch commits the audit head with it."""
        self._head = (head_key(audit.chain), f"{audit.seq}:{audit.hash}")

    def flush(self) -> None:
        """Waits until everything queued so far by this thread is committed."""
        try:
            self._flush_loop(asyncio.get_running_loop())  # its callback may not have run yet
        except RuntimeError:
            pass
        if self.journal is not None:
            self._queue.put(_DRAIN)
            self._wake.set()
        self.submit(lambda conn: None).result()

    def sync(self) -> None:
        """Read-your-writes: journaled rows not yet in SQLite are committed before a read."""
        if self._journaled != self._journal_committed and not self.closed:
            self.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for loop in list(self._loop_batches):  # what loops queued and have not committed yet
            self._flush_loop(loop)
        if self.journal is not None:
            self._queue.put(_DRAIN)
            self._wake.set()
        self._queue.put(_STOP)
        self._thread.join()
        if self.journal is not None:
            self.journal.close()
        self._conn.close()

    # -- the journal ------------------------------------------------------------------------------
    def _replay(self, journal: Journal) -> None:
        """Inserts the journaled rows a killed process had not committed, in chain order."""
        entries = journal.read()
        conn = self._conn
        if entries:
            # Committed entries are among the last rows: the journal holds what came after its last truncation.
            known = {h for (h,) in conn.execute(
                "SELECT hash FROM audit WHERE id > (SELECT COALESCE(MAX(id), 0) FROM audit) - ?",
                (len(entries) + 1024,))}
            missing = [(u, a) for u, a in entries if a.hash not in known]
            if missing:
                conn.execute("BEGIN IMMEDIATE")
                _insert_entries(conn, missing)
                lasts = {a.chain: a for _, a in missing}  # each chain's last record (one chain a process)
                for chain, last in lasts.items():
                    row = conn.execute("SELECT value FROM meta WHERE key = ?", (head_key(chain),)).fetchone()
                    if last.seq > (int(row[0].partition(":")[0]) if row else 0):
                        conn.execute(_HEAD_SQL, (head_key(chain), f"{last.seq}:{last.hash}"))
                conn.execute("COMMIT")
                log.warning("replayed %d ledger row(s) from %s", len(missing), journal.path)
        journal.truncate()

    def _take_pending(self) -> list[tuple[Op, Any]]:
        with self._jlock:
            entries, self._pending = self._pending, []
            if entries:  # this batch's file is truncated once it commits (see _journal_done)
                self._taken = self.journal.switch()  # type: ignore[union-attr]
        if not entries:
            return []

        def op(conn: sqlite3.Connection) -> None:
            self.move_head(_insert_entries(conn, entries))
        return [(op, self._sink)]

    def _commit_taken(self, taken: list[tuple[Op, Any]], batch: list[tuple[Op, Any]] | None = None) -> None:
        """Commits the journal's taken rows (with `batch`, other writes) and empties their file.
        Under _write_lock."""
        ops = (batch or []) + taken
        if ops:
            self._commit(ops)
        self._journal_done()

    def _journal_done(self) -> None:
        assert self.journal is not None
        with self._jlock:
            self._journal_committed = self._journaled - len(self._pending)
            # The file of the committed batch: everything in it is in SQLite now. A kill between
            # the commit and the truncation leaves entries that the replay finds already there.
            if self._taken is not None and not self._sink.failed:
                self.journal.truncate(self._taken)
                self._taken = None

    # -- committing -------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DRAIN:  # let the batch fill: its rows are durable in the journal already
                self._wake.wait(self._flush_interval)
                self._wake.clear()
            batch: list[tuple[Op, Any]] = []
            drained = stop = False
            while True:
                if item is _STOP:
                    stop = True
                    break
                if item is _DRAIN:
                    drained = True
                else:
                    batch.append(item)
                if len(batch) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch or drained:
                # The journal's take, commit and emptying under one lock: a loop's commit may run too.
                with self._write_lock:
                    if drained:
                        self._commit_taken(self._take_pending(), batch)
                    else:
                        self._commit(batch)
            if stop:
                return

    def _flush_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._loop_batches.pop(loop, None)
        if batch:
            with self._write_lock:
                self._commit(batch)

    def _write_head(self) -> None:
        if self._head is not None and self._head != self._committed_head:
            self._conn.execute(_HEAD_SQL, self._head)

    def _commit(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        # Fast path: the whole batch in one transaction. Should a write fail, the batch is rolled
        # back and replayed with one savepoint per write, so that the bad write fails alone.
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = [op(conn) for op, _ in batch]
            self._write_head()
            conn.execute("COMMIT")
        except sqlite3.Error:
            self._roll_back()
        except BaseException as exc:
            self._fail(batch, exc)
            return
        else:
            self._committed_head = self._head
            for (_, future), value in zip(batch, values):
                future.set_result(value)
            return
        self._commit_one_by_one(batch)

    def _roll_back(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._head = self._committed_head

    def _fail(self, batch: list[tuple[Op, Future[Any]]], exc: BaseException) -> None:
        self._roll_back()
        for _, future in batch:
            future.set_exception(exc)

    def _commit_one_by_one(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        conn = self._conn
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
            self._write_head()
            conn.execute("COMMIT")
        except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
            self._fail(batch, exc)
            return
        self._committed_head = self._head
        for future, value, error in results:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)


def _insert_entries(conn: sqlite3.Connection, entries: list[_Entry]) -> AuditRecord:
    """Journaled rows, two executemany for the lot (a third of the cost of a statement each); a row
    SQLite refuses is logged and skipped, not allowed to sink the rest. Returns the last record."""
    conn.execute("SAVEPOINT rows")
    try:
        conn.executemany(USAGE_SQL, [msgspec.structs.astuple(u) for u, _ in entries if u is not None])
        conn.executemany(AUDIT_SQL, [msgspec.structs.astuple(a) for _, a in entries])
    except sqlite3.Error:
        conn.execute("ROLLBACK TO rows")
        for usage, audit in entries:
            try:
                if usage is not None:
                    conn.execute(USAGE_SQL, msgspec.structs.astuple(usage))
                conn.execute(AUDIT_SQL, msgspec.structs.astuple(audit))
            except sqlite3.Error as exc:
                log.error("ledger row %s (audit seq %d) refused by SQLite: %s", audit.request_id, audit.seq, exc)
    conn.execute("RELEASE rows")
    return entries[-1][1]
