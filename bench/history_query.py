"""Request history: a page from the time-indexed store query against the previous way (the ledger's
rows in the window plus a walk of the whole audit trail), on the same database, in one run.

The trail holds `--records` requests spread over 30 days across 50 tenants (one ledger row and one
audit record each, as the gateway writes them). Each way answers the console's default question (a
tenant's last 24 hours, newest 100) and the admin's (everyone's last hour, newest 100), `--repeat`
times; reported: the median per query and the ratio. Also: the writer's cost per request (two
executemany inserts, as the journal's batches do) with migration 2's two audit indexes and without.

    .venv/bin/python -m bench.history_query [--records 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.tenancy import SqliteStore
from gateway.tenancy.history import HistoryEntry, HistoryQuery
from gateway.tenancy.migrations import MIGRATIONS
from gateway.tenancy.sqlite_writer import AUDIT_SQL, USAGE_SQL

TENANTS = [f"tenant-{i:02d}" for i in range(50)]
END = 1768435200.0
SPAN = 30 * 86400.0


def rows(n: int, start: int = 0) -> tuple[list[tuple], list[tuple]]:
    usage, audit = [], []
    for i in range(start, start + n):
        t = END - SPAN + SPAN * i / n if start == 0 else END + i * 0.01
        tenant, rid = TENANTS[i % len(TENANTS)], f"3fa9c0d1e2b4-{i}"
        usage.append((rid, t, tenant, "tok", "qwen3:8b", 120, 32, 64, 0, 1e-4, 200, 40.0))
        audit.append((i + 1, t, tenant, "tok", "127.0.0.1", "qwen3:8b", 200, "ok", 120, 64, "allow", rid, None, None,
                      "p" * 64, "h" * 64))
    return usage, audit


def fill(db: Path, n: int) -> None:
    store = SqliteStore(db, journal=False)
    usage, audit = rows(n)

    def op(conn: sqlite3.Connection) -> None:
        conn.executemany(USAGE_SQL, usage)
        conn.executemany(AUDIT_SQL, audit)
    store.writer.submit(op).result()
    store.close()


def linear(store: SqliteStore, q: HistoryQuery) -> list[object]:
    """The previous history: the window's ledger rows, then every audit record for their reasons."""
    usage = store.usage(q.tenant, q.since, q.until)
    wanted = {u.request_id for u in usage}
    reasons = {a.request_id: a.reason for a in store.audit_records()
               if (q.tenant is None or a.tenant == q.tenant) and q.since <= a.time and a.request_id in wanted}
    out = sorted(((u.time, u.request_id, reasons.get(u.request_id)) for u in usage), reverse=True)
    return out[:q.limit]


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def insert_us(extra_sql: str, n: int = 50000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "i.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(MIGRATIONS[0][1] + extra_sql)
        t0 = time.perf_counter()
        for start in range(0, n, 500):
            usage, audit = rows(500, start + 1)
            conn.execute("BEGIN")
            conn.executemany(USAGE_SQL, usage)
            conn.executemany(AUDIT_SQL, audit)
            conn.execute("COMMIT")
        conn.close()
        return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "h.db"
        fill(db, args.records)
        store = SqliteStore(db, journal=False)
        try:
            for name, q in (("tenant, last 24 h", HistoryQuery(TENANTS[7], END - 86400.0)),
                            ("admin, last 1 h", HistoryQuery(None, END - 3600.0))):
                new: list[HistoryEntry] = store.history(q)
                assert [e.request_id for e in new] == [r[1] for r in linear(store, q)]  # the same page
                before = median_ms(lambda: linear(store, q), args.repeat)
                after = median_ms(lambda: store.history(q), args.repeat)
                print(f"{name:18s} {args.records} records: full walk {before:8.2f} ms, indexed page "
                      f"{after:6.3f} ms, ratio {before / after:7.0f}x")
        finally:
            store.close()
    base = statistics.median(insert_us("") for _ in range(3))
    indexed = statistics.median(insert_us(MIGRATIONS[1][1]) for _ in range(3))
    print(f"writer cost per request: {base:.2f} us without the history indexes, {indexed:.2f} us with them "
          f"(+{indexed - base:.2f} us)")


if __name__ == "__main__":
    main()
