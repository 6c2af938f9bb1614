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


class HistoryRow(HistoryEntry, kw_only=True):
    """A history entry as the console's API sends it: with its time in ISO 8601 too."""

    iso_time: str


class HistoryPage(msgspec.Struct):
    data: list[HistoryRow]
    next: str | None  # pass as `before` for the next (older) page; None on the last


def _row(e: HistoryEntry) -> HistoryRow:
    return HistoryRow(**msgspec.structs.asdict(e), iso_time=iso(e.time))


def history(tenancy: Tenancy, query: HistoryQuery) -> HistoryPage:
    """Newest first, at most `query.limit` rows; one more is read to know whether a page follows."""
    entries = tenancy.store.history(dataclasses.replace(query, limit=query.limit + 1))
    page = entries[:query.limit]
    return HistoryPage([_row(e) for e in page], cursor_after(page[-1]) if len(entries) > query.limit else None)
