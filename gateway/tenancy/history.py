"""Request history: one entry per audit record (every access, allowed or refused) in a time window,
newest first, with its ledger row's counts, cost and latency when it has one. Never prompt text.

The audit record and the ledger row of one request share their time (AuditTrail.append takes the
usage row's), so the store finds a record's row by (tenant, time, request id) through the usage
table's (tenant, time) index; rows written before that rule show the audit counts, without cost or
latency. The store's query is indexed on the audit's time (and tenant), so a page costs what it
holds, not what the trail holds: `HistoryQuery.before` takes `cursor_after` the previous page's last.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import msgspec


class HistoryEntry(msgspec.Struct, kw_only=True):
    id: int  # the audit record's row id: with `time`, the page cursor
    time: float
    request_id: str
    tenant: str | None
    token_id: str | None
    model: str | None
    status: int
    reason: str  # ok, error, aborted, auth, invalid_request, permission, limit, budget, security, lifecycle...
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_eur: float
    latency_ms: float | None  # None: no ledger row (refused before admission)
    verdict: str | None


@dataclass(slots=True, frozen=True)
class HistoryQuery:
    tenant: str | None  # None: every tenant (the admin's view)
    since: float
    until: float | None = None
    model: str | None = None  # a glob, as fnmatch reads it
    status: tuple[int, int] | None = None  # inclusive range
    limit: int = 100
    before: tuple[float, int] | None = None  # (time, id) of the previous page's last entry


def cursor_after(entry: HistoryEntry) -> str:
    """The cursor of the page that follows `entry` (the last of its page)."""
    return f"{entry.time!r}:{entry.id}"


def parse_cursor(text: str) -> tuple[float, int]:
    """ValueError unless `text` is what `cursor_after` wrote."""
    time, sep, row_id = text.partition(":")
    if not sep:
        raise ValueError(f"not a history cursor: {text!r}")
    moment, number = float(time), int(row_id)
    if not (math.isfinite(moment) and 0 <= number < 2**63):  # SQLite's integers, and real instants
        raise ValueError(f"not a history cursor: {text!r}")
    return moment, number


def sql_glob(pattern: str) -> str:
    """fnmatch's pattern in SQLite GLOB's syntax (the same but for a negated set's `!`)."""
    return pattern.replace("[!", "[^")
