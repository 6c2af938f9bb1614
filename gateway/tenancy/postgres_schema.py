"""The PostgreSQL store's schema, versioned in code, as migrations.py is for SQLite.

The tables are SQLite's, column for column (the store's Structs go in and out as tuples in their
field order), with PostgreSQL's types. A gateway fleet shares one database, and its gateways may
start at the same moment: each migration runs under a transaction-scoped advisory lock, so the
first to take it brings the schema up to date and the others, once it commits, find nothing to do.
PostgreSQL's DDL is transactional: a migration and its version are one step, as in SQLite.
"""

from __future__ import annotations

import psycopg

# Any number unique to this schema: the advisory lock that serialises migrations ("llmaas" in ASCII).
LOCK_KEY = 0x6C6C6D616173

# Append only: a released migration never changes; schema_version records how far a database is.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, tier TEXT NOT NULL, secret_hash BYTEA NOT NULL,
            models TEXT NOT NULL, name TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION, rotated_to TEXT, rotated_from TEXT);
        CREATE INDEX tokens_tenant ON tokens (tenant);
        CREATE TABLE usage (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, request_id TEXT NOT NULL,
            time DOUBLE PRECISION NOT NULL, tenant TEXT NOT NULL, token_id TEXT NOT NULL, model TEXT NOT NULL,
            input_tokens BIGINT NOT NULL, cached_input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL, cost_eur DOUBLE PRECISION NOT NULL, status INTEGER NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL);
        CREATE INDEX usage_tenant_time ON usage (tenant, time);
        CREATE TABLE audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, seq BIGINT NOT NULL, time DOUBLE PRECISION NOT NULL,
            tenant TEXT, token_id TEXT, client TEXT, model TEXT, status INTEGER NOT NULL, reason TEXT NOT NULL,
            input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, verdict TEXT, rules_version TEXT,
            request_id TEXT NOT NULL, prompt BYTEA, prompt_digest TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
            chain TEXT NOT NULL DEFAULT '');
        -- As in SQLite: the purge's index holds only records that keep prompt text; history pages by
        -- time, a tenant's and everyone's.
        CREATE INDEX audit_prompt_time ON audit (time) WHERE prompt IS NOT NULL;
        CREATE INDEX audit_tenant_time ON audit (tenant, time);
        CREATE INDEX audit_time ON audit (time);
        CREATE TABLE security_policies (tenant TEXT PRIMARY KEY, modes TEXT NOT NULL,
                                        updated_at DOUBLE PRECISION NOT NULL);
        -- The count of changes to the tokens table, whoever makes them (tokens.py re-reads its view
        -- when it moves). A row updated in the writing transaction, not a sequence: a sequence moves
        -- before its transaction commits, and a reader could take the new count with the old tokens.
        INSERT INTO meta (key, value) VALUES ('tokens_version', '0');
        CREATE FUNCTION llmaas_tokens_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'tokens_version';
            RETURN NULL;
        END $$;
        CREATE TRIGGER tokens_changed AFTER INSERT OR UPDATE OR DELETE ON tokens
            FOR EACH ROW EXECUTE FUNCTION llmaas_tokens_changed();
    """),
]


def migrate(conn: psycopg.Connection) -> int:
    """Brings the database to the latest schema, whoever else is starting; returns its version.
    `conn` is in autocommit mode: the transaction here is the migration's own."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        # Looked up, not CREATE ... IF NOT EXISTS: that needs the right to create tables even when
        # there is nothing to make, which a gateway's role may not have once a DBA made the schema.
        if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:  # type: ignore[index]
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = version = row[0] if row else 0
        for number, sql in MIGRATIONS:
            if number > version:
                conn.execute(sql)
                version = number
        if version != found:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return version
