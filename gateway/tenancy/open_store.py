"""Which store a location opens: a `postgresql://` (or `postgres://`) URL a PostgreSQL database,
shared by a fleet of gateways; anything else an SQLite file, the embedded default. The gateway
(`Tenancy.open`) and the CLI (`llmaas tokens|usage|audit`) both open theirs here.
"""

from __future__ import annotations

import os

from gateway.tenancy.store import Store

# How often the journaled ledger rows are committed to SQLite (they are durable in the journal from
# `finish` on; reads commit what is pending first). A commit costs ~0.3 ms whatever it holds plus
# ~8-13 us a row on this machine, so at a few thousand requests/s a 50 ms batch (~250 rows) costs
# ~10 us a row where a 10 ms one (~30-50 rows) costs 17-25.
JOURNAL_COMMIT_INTERVAL_S = 0.05
# A gateway waits this long for the ledger journal that a CLI command holds while it runs.
JOURNAL_WAIT_S = 2.0


def is_postgres(location: str | os.PathLike[str]) -> bool:
    """Whether a store's location names a PostgreSQL database rather than an SQLite file."""
    return os.fspath(location).startswith(("postgresql://", "postgres://"))


def open_store(location: str | os.PathLike[str], *, cli: bool, create: bool = True) -> Store:
    """The store at `location`. cli: for one command, not a gateway: with SQLite it takes the
    ledger journal only for the replays at open (a gateway starting meanwhile must get it).
    create False: a PostgreSQL database without our tables is refused (ValueError), not given them
    (the CLI checks that an SQLite file exists itself)."""
    if is_postgres(location):
        from gateway.tenancy.postgres_store import PostgresStore  # psycopg only for those who use it

        return PostgresStore(os.fspath(location), create=create)
    from gateway.tenancy.sqlite_store import SqliteStore

    if cli:
        return SqliteStore(location, hold_journal=False)
    return SqliteStore(location, flush_interval_s=JOURNAL_COMMIT_INTERVAL_S, journal_wait_s=JOURNAL_WAIT_S)
