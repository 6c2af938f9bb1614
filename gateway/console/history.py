"""Request history: the ledger's rows (one per admitted request) and the audit trail's refusals
that never reached the ledger (bad token, permission, limits, lifecycle), with each request's
security verdict. Never prompt text: rows carry counts, cost, latency and outcome only.

Scoping: `tenant` is the viewer's (a tenant viewer) or the admin's optional filter; it is applied
in the store query for the ledger and to every audit record, so another tenant's row is never read
into the answer. Refusals without a known tenant (a bad token) are shown to the admin only.

Cost: the store API reads the audit trail only whole (`audit_records()`), so one history query is
linear in the trail's length; it runs in a worker thread. A store method reading audit records by
time range (indexed) would make it proportional to the window (asked of the tenancy owner).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import msgspec

from gateway.console.query import iso
from gateway.tenancy import Tenancy


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


@dataclass(slots=True, frozen=True)
class HistoryFilter:
    tenant: str | None  # None: every tenant (admin only)
    since: float
    until: float | None = None
    model: str | None = None  # a glob
    status: tuple[int, int] | None = None  # inclusive range
    limit: int = 100

    def keeps(self, model: str | None, status: int) -> bool:
        if self.model is not None and (model is None or not fnmatch.fnmatchcase(model, self.model)):
            return False
        return self.status is None or self.status[0] <= status <= self.status[1]


def history(tenancy: Tenancy, f: HistoryFilter) -> list[HistoryRow]:
    """Newest first, at most `f.limit` rows."""
    usage = [u for u in tenancy.store.usage(f.tenant, f.since, f.until) if f.keeps(u.model, u.status)]
    in_ledger = {u.request_id for u in usage}
    audit: dict[str, tuple[str, str | None]] = {}  # request id -> (reason, verdict) of ledger rows
    refusals: list[HistoryRow] = []
    for a in tenancy.store.audit_records():
        if a.time < f.since or (f.until is not None and a.time >= f.until):
            continue
        if f.tenant is not None and a.tenant != f.tenant:
            continue
        if a.request_id and a.request_id in in_ledger:
            audit[a.request_id] = (a.reason, a.verdict)
        elif a.status >= 400 and f.keeps(a.model, a.status):
            refusals.append(HistoryRow(time=a.time, iso_time=iso(a.time), request_id=a.request_id,
                                       tenant=a.tenant, token_id=a.token_id, model=a.model, status=a.status,
                                       reason=a.reason, input_tokens=a.input_tokens, cached_input_tokens=0,
                                       output_tokens=a.output_tokens, reasoning_tokens=0, cost_eur=0.0,
                                       latency_ms=None, verdict=a.verdict))
    rows = [HistoryRow(time=u.time, iso_time=iso(u.time), request_id=u.request_id, tenant=u.tenant,
                       token_id=u.token_id, model=u.model, status=u.status,
                       reason=audit.get(u.request_id, ("ok" if u.status < 400 else "error", None))[0],
                       input_tokens=u.input_tokens, cached_input_tokens=u.cached_input_tokens,
                       output_tokens=u.output_tokens, reasoning_tokens=u.reasoning_tokens, cost_eur=u.cost_eur,
                       latency_ms=u.latency_ms, verdict=audit.get(u.request_id, ("", None))[1])
            for u in usage]
    rows.extend(refusals)
    rows.sort(key=lambda r: r.time, reverse=True)
    return rows[:f.limit]
