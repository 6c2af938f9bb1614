"""The console's JSON API (`/console/api/*`), every answer scoped to the viewer.

    GET /console/api/me                          {"role": "admin"|"tenant", "tenant"}
    GET /console/api/usage?since=30d&until=      per model: requests, tokens, cost (the ledger)
    GET /console/api/series?minutes=60           per model and minute: requests, errors, TTFT and
                                                 end-to-end p50/p99, output tokens per second
    GET /console/api/alerts                      {"active": [...], "history": [...]}, newest first
    GET /console/api/history?model=&status=&since=&until=&limit=&before=&tenant=   (tenant: admin only)
                                                 {"data": [...], "next"}: newest first; `next`, passed
                                                 as `before`, gives the older page (null: no more)
    GET /console/api/models                      the catalog with lifecycle fields

Tenants see their own ledger rows and series, and the alerts about themselves (a budget alert);
fleet-wide alerts (hosts, models' latency) are for the admin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from gateway.alerts.evaluator import AlertEvaluator
from gateway.alerts.events import AlertEvent
from gateway.alerts.recorder import Recorder
from gateway.console.auth import ConsoleAuth, ConsoleDenied, ConsoleForbidden, Viewer
from gateway.console.history import HistoryPage, history
from gateway.console.query import BadQuery, cursor, integer, moment, params, status_matches
from gateway.http import Request, Response, error_response
from gateway.tenancy import Tenancy
from gateway.tenancy.history import HistoryQuery
from gateway.tenancy.ledger import summarize

_ENC = msgspec.json.Encoder()
# On every answer, refusals included: tenant data is never cached, and never sniffed as HTML.
_NO_STORE = [("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
_QS = (0.5, 0.99)
ViewerHandler = Callable[[Viewer, Request], Awaitable[object]]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


class ConsoleApi:
    def __init__(self, auth: ConsoleAuth, recorder: Recorder, tenancy: Tenancy | None = None,
                 alerts: AlertEvaluator | None = None, models: Callable[[], list[str]] | None = None) -> None:
        self.auth, self.recorder, self.tenancy, self.evaluator = auth, recorder, tenancy, alerts
        self._models = models or (lambda: [])

    def guarded(self, handler: ViewerHandler) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            try:
                viewer = self.auth.viewer(request)
                body = await handler(viewer, request)
            except ConsoleDenied as exc:
                code = "invalid_console_token" if exc.status == 401 else "forbidden"
                response = error_response(exc.status, exc.message, code)
            except BadQuery as exc:
                response = error_response(400, str(exc), "invalid_query")
            else:
                response = Response(body=_ENC.encode(body))
            response.headers.extend(_NO_STORE)
            return response
        return wrapper

    def _now(self) -> float:
        return self.tenancy.clock.time() if self.tenancy is not None else self.recorder.clock.time()

    async def me(self, viewer: Viewer, request: Request) -> object:
        return {"role": "admin" if viewer.admin else "tenant", "tenant": viewer.tenant}

    async def usage(self, viewer: Viewer, request: Request) -> object:
        q = params(request.query_string)
        now = self._now()
        since = moment(q.get("since", "30d"), now)
        until = moment(q["until"], now) if "until" in q else None
        if self.tenancy is None:
            return {"since": since, "until": until, "models": []}
        rows = await asyncio.to_thread(self.tenancy.store.usage, viewer.tenant, since, until)
        return {"since": since, "until": until, "models": summarize(rows, "model")}

    async def series(self, viewer: Viewer, request: Request) -> object:
        minutes = integer(params(request.query_string), "minutes", 60, 1, self.recorder.retention)
        per_model = self.recorder.per_minute(minutes, None if viewer.admin else viewer.tenant)
        start = (int(self.recorder.clock.time() // 60) - minutes + 1) * 60
        out = {}
        for model, buckets in sorted(per_model.items()):
            ttft = [b.ttft.quantiles(_QS) for b in buckets]
            e2e = [b.e2e.quantiles(_QS) for b in buckets]
            out[model] = {
                "requests": [b.requests for b in buckets],
                "errors": [b.server_errors for b in buckets],
                "ttft_p50_ms": [_ms(q[0]) for q in ttft],
                "ttft_p99_ms": [_ms(q[1]) for q in ttft],
                "e2e_p50_ms": [_ms(q[0]) for q in e2e],
                "e2e_p99_ms": [_ms(q[1]) for q in e2e],
                "output_tokens_per_s": [round(b.completion_tokens / 60.0, 3) for b in buckets],
            }
        return {"step_s": 60, "times": [start + 60 * i for i in range(minutes)], "models": out}

    def _visible_alert(self, viewer: Viewer, event: AlertEvent) -> bool:
        return viewer.admin or event.labels.get("tenant") == viewer.tenant

    async def alerts(self, viewer: Viewer, request: Request) -> object:
        if self.evaluator is None:
            return {"active": [], "history": []}
        active = [e for e in self.evaluator.active() if self._visible_alert(viewer, e)]
        past = [e for e in reversed(self.evaluator.history()) if self._visible_alert(viewer, e)]
        return {"active": active, "history": past}

    async def history(self, viewer: Viewer, request: Request) -> object:
        q = params(request.query_string)
        now = self._now()
        tenant = viewer.tenant
        if viewer.admin:
            tenant = q.get("tenant")
        elif q.get("tenant") not in (None, viewer.tenant):
            raise ConsoleForbidden("A tenant token reads its own history only.")
        query = HistoryQuery(tenant=tenant, since=moment(q.get("since", "24h"), now),
                             until=moment(q["until"], now) if "until" in q else None, model=q.get("model"),
                             status=status_matches(q["status"]) if "status" in q else None,
                             limit=integer(q, "limit", 100, 1, 1000), before=cursor(q.get("before")))
        if self.tenancy is None:
            return HistoryPage([], None)
        return await asyncio.to_thread(history, self.tenancy, query)

    async def models(self, viewer: Viewer, request: Request) -> object:
        t = self.tenancy
        if t is None:
            return {"data": [{"id": name} for name in self._models()]}
        names = t.catalog.names() if viewer.principal is None else t.visible_models(viewer.principal)
        return {"data": [{"id": name, **t.catalog.card_fields(name)} for name in names]}
