"""PostgreSQL implementation of the Store, for a fleet of gateways sharing one database.

`PostgresStore("postgresql://...")` keeps what SqliteStore keeps, in the same tables (schema:
postgres_schema.py), with the same promises: a write's Future resolves once it is committed (one
writer thread, a transaction a batch: postgres_writer.py); reads use their own connection and see
every committed write, this process's and the other gateways'. There is no ledger journal: a row is
durable once PostgreSQL commits it, so the rows of a finished request are committed before its
answer's last byte, as under SQLite's synchronous=FULL. The gateway's native lane writes its ledger
into an SQLite file and is off over this store (lane_tenancy.unavailable).

What gateways sharing the database rely on:
- rotate_token and revoke_token are conditional UPDATEs (... AND revoked_at IS NULL), whose row
  count says which process won: PostgreSQL makes a concurrent one wait for the first to commit and
  then finds the condition false;
- tokens_version is a counter in `meta` that a trigger moves in the writing transaction;
- each process chains its own audit records (audit.py), each chain's head in `meta` under its name;
- set_meta_once is an INSERT ... ON CONFLICT DO NOTHING: the first writer's value stays.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from gateway.tenancy.history import HistoryEntry, HistoryQuery, history_where, sql_regex
from gateway.tenancy.open_store import is_postgres
from gateway.tenancy.postgres_schema import migrate
from gateway.tenancy.postgres_writer import AUDIT_SQL, USAGE_SQL, PostgresWriter, Rows
from gateway.tenancy.sqlite_writer import parse_heads
from gateway.tenancy.store import AuditRecord, PolicyRecord, TokenRecord, UsageRow

_TOKEN_COLS = list(TokenRecord.__struct_fields__)
_USAGE_COLS = list(UsageRow.__struct_fields__)
_AUDIT_COLS = list(AuditRecord.__struct_fields__)
_HISTORY_FIELDS = list(HistoryEntry.__struct_fields__)
_UPSERT_TOKEN = (f"INSERT INTO tokens ({', '.join(_TOKEN_COLS)}) VALUES ({', '.join(['%s'] * len(_TOKEN_COLS))}) "
                 f"ON CONFLICT (id) DO UPDATE SET "
                 f"{', '.join(f'{c} = EXCLUDED.{c}' for c in _TOKEN_COLS if c != 'id')}")
_INSERT_TOKEN = f"INSERT INTO tokens ({', '.join(_TOKEN_COLS)}) VALUES ({', '.join(['%s'] * len(_TOKEN_COLS))})"
# As sqlite_store.py's: a record's ledger row shares its tenant, time and request id (history.py).
_HISTORY_SQL = """
    SELECT a.id, a.time, a.request_id, a.tenant, a.token_id, a.model, a.status, a.reason,
           COALESCE(u.input_tokens, a.input_tokens), COALESCE(u.cached_input_tokens, 0),
           COALESCE(u.output_tokens, a.output_tokens), COALESCE(u.reasoning_tokens, 0), COALESCE(u.cost_eur, 0.0),
           u.latency_ms, a.verdict
    FROM audit a LEFT JOIN usage u ON u.id = (
        SELECT MAX(id) FROM usage WHERE tenant = a.tenant AND time = a.time AND request_id = a.request_id)
    WHERE {where} ORDER BY a.time DESC, a.id DESC LIMIT %s"""
# Unless the URL says otherwise: a gateway starting while the server is down fails instead of
# hanging, and a connection to a server that vanished (a network partition) fails its writes within
# half a minute instead of the kernel's quarter of an hour, for /health to say so (file_lost).
_DEFAULTS = {"connect_timeout": 10, "tcp_user_timeout": 30_000, "keepalives_idle": 30, "keepalives_interval": 10,
             "keepalives_count": 3, "application_name": "llmaas"}


def describe(url: str) -> str:
    """The database a URL names, for messages: never its password."""
    params = conninfo_to_dict(url)
    host = params.get("host") or "localhost"
    return f"the PostgreSQL database {params.get('dbname') or '(default)'} on {host}"


class PostgresStore:
    def __init__(self, url: str, batch_max: int = 512, create: bool = True) -> None:
        """create False: a database without our tables is refused (ValueError), not given them: a
        command that only reads was pointed at the wrong database (empty, it would list no tokens
        and verify as intact)."""
        if not is_postgres(url):
            raise ValueError(f"not a PostgreSQL URL (postgresql://...): {url!r}")
        self.url = url
        self.describe = describe(url)
        given = conninfo_to_dict(url)
        self._options = {k: v for k, v in _DEFAULTS.items() if k not in given}
        self._reader = self._connect()
        try:
            if not create and self._reader.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:  # type: ignore[index]
                raise ValueError(f"no llmaas tables in {self.describe} (made by the first `llmaas tokens create` "
                                 "or gateway start)")
            migrate(self._reader)
            self.writer = PostgresWriter(self._connect, self.describe, batch_max)
        except BaseException:
            self._reader.close()
            raise
        self._read_lock = threading.Lock()

    def _connect(self) -> psycopg.Connection:
        # Autocommit: the writer's transactions are its own (conn.transaction()), and each read
        # sees what was committed when it runs. No statement prepared on the server (psycopg
        # prepares one run 5 times): behind a pooler in transaction mode (PgBouncer before 1.21) the
        # next transaction may run on another server connection, which does not have it. The rows
        # of requests go as simple queries anyway, and reads are few.
        return psycopg.connect(self.url, autocommit=True, prepare_threshold=None, **self._options)

    def _read(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if not self._reader.broken:
                    raise
            # The connection was lost (a server restart): a new one, once; raises if none can be had.
            self._reader.close()
            self._reader = self._connect()
            return self._reader.execute(sql, params).fetchall()

    def flush(self) -> None:
        """Waits until everything queued so far is committed."""
        self.writer.flush()

    def close(self) -> None:
        if self.writer.closed:
            return
        self.writer.close()
        self._reader.close()

    def file_lost(self) -> str | None:
        """Why what this store writes cannot reach its database (its connection lost, and no new
        one to be had), else None. It never waits: it queues an empty transaction, which finds a
        connection that died while idle, and says what the last commit or that probe found."""
        self.writer.probe()
        return self.writer.lost

    # -- meta ---------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def tokens_version(self) -> int:
        """Moves whenever a token is written, by any process (a trigger counts the changes)."""
        return int(self.get_meta("tokens_version") or 0)

    def set_meta_once(self, key: str, value: str) -> str:
        """Sets `key` unless some process set it first; returns the value that won."""
        def op(conn: psycopg.Connection) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))
            return conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()[0]  # type: ignore[index]
        return self.writer.submit(op).result()

    # -- tokens -------------------------------------------------------------------------------------
    def put_token(self, token: TokenRecord) -> Future[None]:
        return self.writer.submit(lambda conn: conn.execute(_UPSERT_TOKEN, _token_row(token)) and None)

    def rotate_token(self, old: TokenRecord, new: TokenRecord) -> Future[bool]:
        row = _token_row(new)

        def op(conn: psycopg.Connection) -> bool:
            # The compare-and-set that makes one successor per token across gateways: a concurrent
            # one waits for this transaction, then finds rotated_to set and updates nothing.
            moved = conn.execute("UPDATE tokens SET rotated_to = %s, expires_at = %s WHERE id = %s "
                                 "AND rotated_to IS NULL AND revoked_at IS NULL",
                                 (old.rotated_to, old.expires_at, old.id)).rowcount
            if moved:
                conn.execute(_INSERT_TOKEN, row)
            return bool(moved)
        return self.writer.submit(op)

    def revoke_token(self, token_id: str, at: float) -> Future[bool]:
        # The one column, not the whole row: a rotation another gateway wrote meanwhile is kept.
        return self.writer.submit(lambda conn: bool(conn.execute(
            "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", (at, token_id)).rowcount))

    def get_token(self, token_id: str) -> TokenRecord | None:
        rows = self._read(f"SELECT {', '.join(_TOKEN_COLS)} FROM tokens WHERE id = %s", (token_id,))
        return _token(rows[0]) if rows else None

    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        sql = f"SELECT {', '.join(_TOKEN_COLS)} FROM tokens"
        rows = self._read(sql + " WHERE tenant = %s ORDER BY created_at", (tenant,)) if tenant is not None else \
            self._read(sql + " ORDER BY tenant, created_at")
        return [_token(r) for r in rows]

    # -- security policies --------------------------------------------------------------------------
    def put_policy(self, record: PolicyRecord) -> Future[None]:
        row = (record.tenant, msgspec.json.encode(record.modes).decode(), record.updated_at)
        return self.writer.submit(lambda conn: conn.execute(
            "INSERT INTO security_policies (tenant, modes, updated_at) VALUES (%s, %s, %s) ON CONFLICT (tenant) "
            "DO UPDATE SET modes = EXCLUDED.modes, updated_at = EXCLUDED.updated_at", row) and None)

    def delete_policy(self, tenant: str) -> Future[bool]:
        return self.writer.submit(lambda conn: conn.execute(
            "DELETE FROM security_policies WHERE tenant = %s", (tenant,)).rowcount > 0)

    def policies(self) -> list[PolicyRecord]:
        rows = self._read("SELECT tenant, modes, updated_at FROM security_policies ORDER BY tenant")
        return [PolicyRecord(tenant=t, modes=msgspec.json.decode(m), updated_at=u) for t, m, u in rows]

    # -- usage and audit ----------------------------------------------------------------------------
    def record(self, usage: UsageRow | None, audit: AuditRecord | None) -> Future[None]:
        """The usage row and the audit record of one request, in one transaction."""
        return self.writer.submit(Rows(usage, audit))

    def insert_rows(self, usage_rows: list[tuple[Any, ...]], audit_rows: list[tuple[Any, ...]], chain: str,
                    head: str) -> None:
        """Rows as tuples in column order, committed when this returns, with the head ("seq:hash")
        they move their chain to; raises when the commit fails."""
        def op(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                if usage_rows:
                    cur.executemany(USAGE_SQL, usage_rows)
                if audit_rows:
                    cur.executemany(AUDIT_SQL, audit_rows)
            self.writer.set_head(chain, head)
        self.writer.submit(op).result()

    def usage(self, tenant: str | None, since: float, until: float | None = None) -> list[UsageRow]:
        where, params = ["time >= %s"], [since]
        if until is not None:
            where.append("time < %s")
            params.append(until)
        if tenant is not None:
            where.append("tenant = %s")
            params.append(tenant)  # type: ignore[arg-type]
        rows = self._read(f"SELECT {', '.join(_USAGE_COLS)} FROM usage WHERE {' AND '.join(where)} "
                          f"ORDER BY time, id", tuple(params))
        return [UsageRow(**dict(zip(_USAGE_COLS, r))) for r in rows]

    def cost_since(self, tenant: str, since: float) -> float:
        rows = self._read("SELECT COALESCE(SUM(cost_eur), 0) FROM usage WHERE tenant = %s AND time >= %s",
                          (tenant, since))
        return float(rows[0][0])

    def has_audit_record(self, tenant: str | None, time: float, request_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM audit WHERE tenant IS NOT DISTINCT FROM %s AND time = %s "
                               "AND request_id = %s LIMIT 1", (tenant, time, request_id)))

    def audit_records(self) -> Iterator[AuditRecord]:
        # Stored order (the identity column), not seq order: a reordering must show up to the
        # verifier. One statement, so one snapshot: a batch committing meanwhile is in whole or not.
        rows = self._read(f"SELECT {', '.join(_AUDIT_COLS)} FROM audit ORDER BY id")
        for r in rows:
            yield AuditRecord(**dict(zip(_AUDIT_COLS, r)))

    def audit_heads(self) -> dict[str, tuple[int, str]]:
        return parse_heads(self._read(
            "SELECT key, value FROM meta WHERE key = 'audit_head' OR starts_with(key, 'audit_head:')"))

    def history(self, query: HistoryQuery) -> list[HistoryEntry]:
        """Newest first, at most `query.limit` entries (see history.py)."""
        where, params = history_where(query, "%s", "~", sql_regex)
        rows = self._read(_HISTORY_SQL.format(where=" AND ".join(where)), (*params, query.limit))
        return [HistoryEntry(**dict(zip(_HISTORY_FIELDS, r))) for r in rows]

    def purge_prompts(self, before: float) -> Future[int]:
        return self.writer.submit(lambda conn: conn.execute(
            "UPDATE audit SET prompt = NULL WHERE prompt IS NOT NULL AND time < %s", (before,)).rowcount)


def _token_row(token: TokenRecord) -> tuple[Any, ...]:
    return tuple(msgspec.json.encode(v).decode() if f == "models" else v
                 for f, v in zip(_TOKEN_COLS, msgspec.structs.astuple(token)))


def _token(row: tuple[Any, ...]) -> TokenRecord:
    values = dict(zip(_TOKEN_COLS, row))
    values["models"] = msgspec.json.decode(values["models"])
    return TokenRecord(**values)
