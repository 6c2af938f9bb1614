"""Requests' rows as one SQL text for the PostgreSQL writer (postgres_writer.py): a batch's usage
rows, audit records and chain heads in three multi-row statements, sent as one simple query.

Why text and not parameters: psycopg spends ~270 us of CPU on a transaction of a usage row, an audit
record and a head through `executemany` in a pipeline, ~60 us on the same rows as one simple query
(bench/RESULTS.md); at one request in flight that is most of what the store adds to a request. The
statements of one simple query are one transaction on the server: all in, or none.

Literals are written so that no value can end its string: text as an escape string (E'...', its
backslashes and quotes doubled, which holds whatever standard_conforming_strings says), bytes as bytea
hex, numbers quoted (floats in their shortest round-trip digits: the server reads them with float8in,
exactly), each then taken as its column's type. Text with a NUL is refused as psycopg refuses it
(PostgreSQL text cannot hold one).
"""

from __future__ import annotations

import math

import psycopg

from gateway.tenancy.store import AuditRecord, UsageRow

_USAGE_INTO = f"INSERT INTO usage ({', '.join(UsageRow.__struct_fields__)}) VALUES "
_AUDIT_INTO = f"INSERT INTO audit ({', '.join(AuditRecord.__struct_fields__)}) VALUES "
_HEADS_INTO = "INSERT INTO meta (key, value) VALUES "
_HEADS_UPSERT = " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"


def literal(value: object) -> str:
    """`value` as an SQL constant."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:  # type: ignore[operator]
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"  # type: ignore[attr-defined]
    if kind is int:  # not bool; quoted, as -2**63 unquoted is minus a constant out of bigint's range
        return f"'{value}'"
    if kind is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return f"'{value!r}'"
        return "'NaN'" if value != value else ("'Infinity'" if value > 0 else "'-Infinity'")  # type: ignore[operator]
    if value is None:
        return "NULL"
    if kind is bytes:
        return f"E'\\\\x{value.hex()}'"  # type: ignore[attr-defined]
    raise TypeError(f"no SQL literal for a {kind.__name__}")


def _values(fields: tuple[str, ...], row: object) -> str:
    return "(" + ",".join([literal(getattr(row, name)) for name in fields]) + ")"


def rows_sql(usage: list[UsageRow], audits: list[AuditRecord]) -> list[str]:
    """The statements that insert these rows (none for an empty list)."""
    statements = []
    if usage:
        fields = UsageRow.__struct_fields__
        statements.append(_USAGE_INTO + ",".join([_values(fields, row) for row in usage]))
    if audits:
        fields = AuditRecord.__struct_fields__
        statements.append(_AUDIT_INTO + ",".join([_values(fields, record) for record in audits]))
    return statements


def heads_sql(heads: dict[str, str]) -> list[str]:
    """The statement that sets these meta keys (in key order: two writers moving the same keys take
    their row locks in one order), none for no key."""
    if not heads:
        return []
    pairs = ",".join([f"({literal(key)},{literal(value)})" for key, value in sorted(heads.items())])
    return [_HEADS_INTO + pairs + _HEADS_UPSERT]
