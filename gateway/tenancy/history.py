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
from collections.abc import Callable

from dataclasses import dataclass
from typing import Any

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


def history_where(q: HistoryQuery, mark: str, model_match: str,
                  model_pattern: Callable[[str], str]) -> tuple[list[str], list[Any]]:
    """The conditions of a history page and their parameters, in a store's SQL: `mark` its parameter
    placeholder ("?", "%s"), `model_match` its pattern operator on the model (GLOB, ~) with
    `model_pattern` turning the fnmatch glob into its pattern. The time bounds are the index's
    range, tenant its prefix."""
    where: list[str] = [f"a.time >= {mark}"]
    params: list[Any] = [q.since]
    if q.until is not None:
        where.append(f"a.time < {mark}")
        params.append(q.until)
    if q.before is not None:  # keyset paging: the bound on time keeps the scan to the page
        where.append(f"a.time <= {mark} AND (a.time < {mark} OR a.id < {mark})")
        params.extend((q.before[0], q.before[0], q.before[1]))
    if q.tenant is not None:
        where.append(f"a.tenant = {mark}")
        params.append(q.tenant)
    if q.model is not None:
        where.append(f"a.model {model_match} {mark}")
        params.append(model_pattern(q.model))
    if q.status is not None:
        where.append(f"a.status BETWEEN {mark} AND {mark}")
        params.extend(q.status)
    return where, params


def sql_glob(pattern: str) -> str:
    """fnmatch's pattern in SQLite GLOB's syntax (the same but for a negated set's `!`)."""
    return pattern.replace("[!", "[^")


def sql_regex(pattern: str) -> str:
    """fnmatch's pattern as an anchored PostgreSQL regular expression (PostgreSQL has no GLOB, and
    LIKE no sets): `*` any run, `?` any character, `[...]` a set (`[!...]` negated), the rest literal."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        end = _set_end(pattern, i) if c == "[" else -1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif end >= 0:
            out.append(_set(pattern[i:end]))
            i = end + 1
        else:
            out.append(_literal(c))
    return "".join(out) + "$"


def _literal(c: str) -> str:
    # A backslash before a letter or digit is an escape (\d); before anything else, that character.
    return c if c.isalnum() else "\\" + c


def _set_end(pattern: str, start: int) -> int:
    """Where the set opened before `start` closes, as fnmatch reads it (a `]` first in the set is a
    member); -1 when it does not, and the `[` is a plain character."""
    j = start + (start < len(pattern) and pattern[start] == "!")
    j += j < len(pattern) and pattern[j] == "]"
    return pattern.find("]", j)


def _set(body: str) -> str:
    """A set's members as fnmatch reads them: `a-z` a range, a reversed one empty (PostgreSQL would
    refuse it), `-` first or last itself. An empty set matches nothing, its negation any character."""
    negated = body.startswith("!")
    body = body[negated:]
    members, k = [], 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            if body[k] <= body[k + 2]:
                members.append(f"{_literal(body[k])}-{_literal(body[k + 2])}")
            k += 3
        else:
            members.append(_literal(body[k]))
            k += 1
    if not members:
        return "." if negated else "(?!)"
    return "[" + "^" * negated + "".join(members) + "]"
