"""Request history for the console: one page of the store's history (gateway.tenancy.history), as
the page shows it. Every audit record is a row: the ledger's requests with their counts, cost,
latency and security verdict, and the refusals that never reached the ledger (bad token,
permission, limits, lifecycle). Never prompt text.

Scoping: `tenant` is the viewer's (a tenant viewer) or the admin's optional filter, applied in the
store's query, so another tenant's row is never read into the answer. Refusals without a known
tenant (a bad token) are shown to the admin only. A page costs what it holds: the query is
indexed on time and tenant, and `next` is the cursor to pass as `before` for the page after.
"""

from __future__ import annotations

import dataclasses

import msgspec

from gateway.console.query import iso
from gateway.tenancy import Tenancy
from gateway.tenancy.history import HistoryEntry, HistoryQuery, cursor_after


class HistoryRow(msgspec.Struct, kw_only=True):
    time: float
    iso_time: str
    request_id: str
    tenant: str | None
    token_id: str | None
    model: str | None
    status: int
    reason: str  # ok, error, aborted, auth, permission, limit, budget, security, lifecycle...
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_eur: float
    latency_ms: float | None
    verdict: str | None


class HistoryPage(msgspec.Struct):
    data: list[HistoryRow]
    next: str | None  # pass as `before` for the next (older) page; None on the last


def _row(e: HistoryEntry) -> HistoryRow:
    return HistoryRow(time=e.time, iso_time=iso(e.time), request_id=e.request_id, tenant=e.tenant,
                      token_id=e.token_id, model=e.model, status=e.status, reason=e.reason,
                      input_tokens=e.input_tokens, cached_input_tokens=e.cached_input_tokens,
                      output_tokens=e.output_tokens, reasoning_tokens=e.reasoning_tokens, cost_eur=e.cost_eur,
                      latency_ms=e.latency_ms, verdict=e.verdict)


def history(tenancy: Tenancy, query: HistoryQuery) -> HistoryPage:
    """Newest first, at most `query.limit` rows; one more is read to know whether a page follows."""
    entries = tenancy.store.history(dataclasses.replace(query, limit=query.limit + 1))
    page = entries[:query.limit]
    return HistoryPage([_row(e) for e in page], cursor_after(page[-1]) if len(entries) > query.limit else None)
