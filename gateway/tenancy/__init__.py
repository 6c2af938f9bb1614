"""Tenants, API tokens, tiers and rate limits, the usage ledger, the audit trail and the model
catalog: the state behind the gateway's tenant stages, with a narrow API for its request path.

Stage API (all in `Tenancy`, made once per gateway with `Tenancy.open(db_path, tiers_path, ...)`;
every refusal is a `TenancyError` carrying `status`, OpenAI `type`, `code`, `message`, `param`,
and `headers` to send (on a refusal after authentication: the x-ratelimit-* set, plus Retry-After
on a 429); `exc.body()` is the `{"error": {...}}` dict. Each refusal is already in the audit
trail when it is raised, so the caller only maps it:

    except TenancyError as exc:
        return Response(status=exc.status, body=ENCODER.encode(exc.body()), headers=exc.headers)

The request path:

    principal = tenancy.authenticate(request.headers.get("authorization"),
                                     request_id=rid, client=addr)          # 401
    # --no-auth: principal = tenancy.local_principal()
    admission = tenancy.admit(principal, body.model, prompt_tokens=n_prompt,
                              max_tokens=body.max_tokens, n=body.n, request_id=rid,
                              client=addr)          # 403, 404, 410, 503, 400 too large, 429
    # pass admission.max_tokens (per choice) and admission.priority to the engine; send
    # admission.headers() (x-ratelimit-*, Deprecation/Sunset, token rotation) on the response
    # and admission.warning (deprecation text, or None) in the body.
    # If the security stage blocks it: tenancy.refuse(admission, status=400, verdict=...)
    future = tenancy.finish(admission, Counts(input, cached_input, output, reasoning),
                            status=200, verdict=...)  # aborted too: what was generated, status 499
    await asyncio.wrap_future(future)   # before the last byte: the ledger row is durable

`tenancy.visible_models(principal)` lists the catalog models a token may see, and
`tenancy.catalog.card_fields(name)` gives each one's lifecycle fields for /v1/models;
`tenancy.catalog.set_hosts(name, hosts)` records where the gateway's config serves a model.
`llmaas serve`: `secret, token_id = tenancy.local_token(os.environ.get("LLMAAS_API_KEY"))`, and
print the secret when it is not None. `tenancy.audit.purge()` drops prompt text past its retention
(purger.py runs it in a gateway). `tenancy.store.history(HistoryQuery(...))` pages the request history by time
(history.py); `tenancy.security_policies.get(tenant)` is the prompt-security policy an operator set
for a tenant through the admin API, None when the config's applies (security_policies.py). Time comes from `clock` (injectable; `FakeClock` in tests). Token design
(format, hashing, rotation and how a tenant receives an automatically rotated secret):
`gateway/tenancy/tokens.py`.
"""

from __future__ import annotations

from gateway.tenancy.catalog import Catalog, Lifecycle, ModelEntry
from gateway.tenancy.clock import Clock, FakeClock, SystemClock
from gateway.tenancy.errors import (
    AuthenticationError,
    BudgetExceeded,
    ModelNotFound,
    ModelRetired,
    ModelUnavailable,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    TenancyError,
)
from gateway.tenancy.ledger import Counts, cost_eur
from gateway.tenancy.service import Admission, Principal, Tenancy, default_db_path
from gateway.tenancy.sqlite_store import SqliteStore
from gateway.tenancy.tiers import Prices, Tier, TierConfig, load_config

__all__ = [
    "Admission", "AuthenticationError", "BudgetExceeded", "Catalog", "Clock", "Counts", "FakeClock",
    "Lifecycle", "ModelEntry", "ModelNotFound", "ModelRetired", "ModelUnavailable", "PermissionDenied",
    "Prices", "Principal", "RateLimited", "RequestTooLarge", "SqliteStore", "SystemClock", "Tenancy",
    "TenancyError", "Tier", "TierConfig", "cost_eur", "default_db_path", "load_config",
]
