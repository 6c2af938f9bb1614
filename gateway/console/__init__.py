"""The web console at `/console`: usage, latency and throughput graphs, alerts, request history
and the model catalog, for the admin (all tenants) or one tenant (its own data only).

    from gateway.console import add_console_routes
    add_console_routes(router, recorder=recorder, tenancy=tenancy, alerts=alerts,
                       admin_token=admin_token, models=lambda: fleet.model_names)

The page is static (HTML, JS, CSS and the vendored uPlot under static/, no build step); it asks
for a token, keeps it in sessionStorage and calls the JSON API in `api.py` with it as a Bearer.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.alerts.evaluator import AlertEvaluator
from gateway.alerts.recorder import Recorder
from gateway.console.api import ConsoleApi
from gateway.console.auth import ConsoleAuth, Viewer
from gateway.console.static_files import STATIC_DIR, add_static_routes
from gateway.http import Router
from gateway.tenancy import Tenancy


def add_console_routes(router: Router, *, recorder: Recorder, tenancy: Tenancy | None = None,
                       alerts: AlertEvaluator | None = None, admin_token: str | None = None,
                       models: Callable[[], list[str]] | None = None) -> ConsoleApi:
    """Adds `GET /console`, its static files and `/console/api/*`. With neither a tenancy nor an
    admin token nobody could log in: the page is still served and says so on login."""
    api = ConsoleApi(ConsoleAuth(tenancy, admin_token), recorder, tenancy, alerts, models)
    add_static_routes(router)
    for name in ("me", "usage", "series", "alerts", "history", "models"):
        router.add("GET", f"/console/api/{name}", api.guarded(getattr(api, name)))
    return api


__all__ = ["STATIC_DIR", "ConsoleApi", "Viewer", "add_console_routes"]
