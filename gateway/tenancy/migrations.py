"""The store's schema, versioned in code: PRAGMA user_version says how far a file has come."""

from __future__ import annotations

import sqlite3

# Append only: a released migration never changes; PRAGMA user_version records how far a file is.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, tier TEXT NOT NULL, secret_hash BLOB NOT NULL,
            models TEXT NOT NULL, name TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
            revoked_at REAL, rotated_to TEXT, rotated_from TEXT);
        CREATE INDEX tokens_tenant ON tokens (tenant);
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, time REAL NOT NULL, tenant TEXT NOT NULL,
            token_id TEXT NOT NULL, model TEXT NOT NULL, input_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL, cost_eur REAL NOT NULL, status INTEGER NOT NULL,
            latency_ms REAL NOT NULL);
        CREATE INDEX usage_tenant_time ON usage (tenant, time);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, time REAL NOT NULL, tenant TEXT, token_id TEXT, client TEXT,
            model TEXT, status INTEGER NOT NULL, reason TEXT NOT NULL, input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL, verdict TEXT, request_id TEXT NOT NULL, prompt BLOB,
            prompt_digest TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
        -- Partial: only records that keep prompt text (for the purge), so that without a retention
        -- policy an audit insert touches no index page at all.
        CREATE INDEX audit_prompt_time ON audit (time) WHERE prompt IS NOT NULL;
    """),
    (2, """
        -- Request history pages by time: a tenant's (the console's tenant view) and everyone's (the
        -- admin's). Audit rows arrive in time order, so both indexes grow at their right edge.
        CREATE INDEX IF NOT EXISTS audit_tenant_time ON audit (tenant, time);
        CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
    """),
    (3, """
        -- Per-tenant prompt-security policies set through the admin API (security_policies.py);
        -- modes: JSON, each layer's mode ({"patterns": "flag_only", ...}).
        CREATE TABLE security_policies (tenant TEXT PRIMARY KEY, modes TEXT NOT NULL, updated_at REAL NOT NULL);
    """),
    (4, """
        -- The prompt-security rule files behind a record's verdict (audit.py hashes it when set).
        ALTER TABLE audit ADD COLUMN rules_version TEXT;
    """),
    (5, """
        -- A counter of changes to the tokens table, whoever makes them (a gateway, the CLI): the
        -- gateway's native lane re-reads the tokens only when it moved (gateway/lane_tenancy.py).
        INSERT OR IGNORE INTO meta (key, value) VALUES ('tokens_version', '0');
        CREATE TRIGGER tokens_inserted AFTER INSERT ON tokens BEGIN
            UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'tokens_version'; END;
        CREATE TRIGGER tokens_updated AFTER UPDATE ON tokens BEGIN
            UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'tokens_version'; END;
        CREATE TRIGGER tokens_deleted AFTER DELETE ON tokens BEGIN
            UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'tokens_version'; END;
    """),
    (6, """
        -- Each writing process chains its audit records apart (audit.py): the chain's name, its
        -- head in meta under 'audit_head:<chain>' ('audit_head' for the unnamed chain of old records).
        ALTER TABLE audit ADD COLUMN chain TEXT NOT NULL DEFAULT '';
    """),
]


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the file to the latest schema; returns its version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, sql in MIGRATIONS:
        if number > version:
            # executescript commits first; the BEGIN makes the migration and its version one step.
            conn.executescript(f"BEGIN; {sql}; PRAGMA user_version = {number}; COMMIT;")
            version = number
    return version
