"""The tenancy stages as one object the gateway's request path calls: see the package docstring."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gateway.tenancy.audit import AuditTrail
from gateway.tenancy.catalog import Catalog, Lifecycle
from gateway.tenancy.clock import Clock, SystemClock
from gateway.tenancy.encryption import KEY_ENV, PromptCipher, load_key
from gateway.tenancy.errors import AuthenticationError, ModelNotFound, PermissionDenied, TenancyError
from gateway.tenancy import lane_ledger
from gateway.tenancy.ledger import Counts, cost_eur, worst_case_cost
from gateway.tenancy.permissions import ModelPatterns
from gateway.tenancy import native_limits
from gateway.tenancy.native_limits import NativeGrant, NativeRateLimiter
from gateway.tenancy.rate_limit import Grant, RateLimiter
from gateway.tenancy.security_policies import SecurityPolicies
from gateway.tenancy.open_store import open_store
from gateway.tenancy.store import Store, UsageRow
from gateway.tenancy.tiers import Prices, Tier, TierConfig, load_config
from gateway.tenancy.tokens import CachedToken, TokenService

# LLMAAS_DB: an SQLite file's path, or a postgresql:// URL (open_store.py).
DB_ENV, TIERS_ENV = "LLMAAS_DB", "LLMAAS_TIERS"
LOCAL_TENANT, LOCAL_TIER = "local", "local"


def default_db_path() -> str:
    if os.environ.get(DB_ENV):
        return os.environ[DB_ENV]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "llmaas", "llmaas.db")


@dataclass(slots=True)
class Principal:
    """Who is calling: the token's tenant, tier and allowed models."""

    token_id: str
    tenant: str
    tier: Tier
    patterns: ModelPatterns
    # Set on tokens in their rotation grace; `new_secret` only on the response that rotated it.
    rotation_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Admission:
    """An admitted request: what it holds until `finish` (or `refuse`) settles it."""

    principal: Principal
    model: str
    request_id: str
    client: str | None
    grant: Grant | NativeGrant
    lifecycle: Lifecycle
    prices: Prices
    max_tokens: int
    started: float
    cost_eur: float = 0.0  # what `finish` billed

    @property
    def priority(self) -> int:
        return self.principal.tier.priority

    @property
    def warning(self) -> str | None:
        return self.lifecycle.warning

    def headers(self) -> list[tuple[str, str]]:
        return [*self.grant.headers, *self.lifecycle.headers, *self.principal.rotation_headers]


def rfc3339(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # past year 9999 (a grace stored before it was bounded)
        return "9999-12-31T23:59:59Z"


class Tenancy:
    def __init__(self, store: Store, config: TierConfig, catalog: Catalog, clock: Clock | None = None,
                 audit_key: bytes | None = None, prompt_retention_s: float | None = None) -> None:
        self.clock = clock or SystemClock()
        self.store, self.config, self.catalog = store, config, catalog
        self.tokens = TokenService(store, self.clock, config.token_policy)
        # The native table when it is built: the gateway's native lane shares it (native_limits.py).
        self.limiter: RateLimiter | NativeRateLimiter = (
            NativeRateLimiter(self.clock, store.cost_since) if native_limits.available()
            else RateLimiter(self.clock, store.cost_since))
        cipher = PromptCipher(audit_key) if audit_key else None
        self.audit = AuditTrail(store, self.clock, cipher, prompt_retention_s)
        self.security_policies = SecurityPolicies(store, self.clock)  # the admin API's, over the config's
        # The principal of each token last verified, reused while its cached record is the same
        # object (the token cache re-reads records every second): most requests build none.
        self._principals: dict[str, tuple[CachedToken, Principal]] = {}

    @property
    def lane_journal_path(self) -> str:
        """Where the gateway's native lane journals the usage of what it serves (lane_ledger.py)."""
        return getattr(self.store, "path", "") + lane_ledger.SUFFIX

    @classmethod
    def open(cls, db_path: str | None = None, tiers_path: str | None = None, catalog_path: str | None = None,
             clock: Clock | None = None, prompt_retention_s: float | None = None) -> Tenancy:
        """db_path: an SQLite file, or a PostgreSQL database's postgresql:// URL (default: LLMAAS_DB)."""
        clock = clock or SystemClock()
        key = load_key()
        if prompt_retention_s and key is None:
            raise ValueError(f"[tenancy] prompt_retention keeps prompt text, encrypted: set {KEY_ENV} to a 32-byte "
                             "key in base64 (`llmaas audit new-key` makes one)")
        store = open_store(db_path or default_db_path(), cli=False)
        tenancy = cls(store, load_config(tiers_path or os.environ.get(TIERS_ENV)), Catalog.load(clock, catalog_path),
                      clock, key, prompt_retention_s)
        # What passed its retention while no gateway ran; a running one purges on its own (purger.py).
        tenancy.audit.purge()
        return tenancy

    def close(self) -> None:
        self.store.close()

    def local_token(self, api_key: str | None = None) -> tuple[str | None, str]:
        """The token `llmaas serve` starts with: `api_key` (LLMAAS_API_KEY) registered if given,
        else a fresh one, the previous serve token being revoked (its secret was only ever printed).
        Returns (secret to print, or None when the caller chose it; token id)."""
        if api_key:
            return None, self.tokens.register(api_key, LOCAL_TENANT, LOCAL_TIER, name="LLMAAS_API_KEY").id
        for old in self.store.list_tokens(LOCAL_TENANT):
            if old.name == "llmaas serve" and old.revoked_at is None:
                self.tokens.revoke(old.id)
        secret, record = self.tokens.create(LOCAL_TENANT, LOCAL_TIER, name="llmaas serve")
        return secret, record.id

    # -- stage 1: who ------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None, *, request_id: str = "", client: str | None = None,
                     rotate: bool = True) -> Principal:
        """The caller of an `Authorization: Bearer ...` header; AuthenticationError (401) otherwise,
        recorded in the audit trail. A token due for rotation is rotated here, its new secret in
        `principal.rotation_headers`: a caller whose answer cannot carry them passes rotate=False."""
        try:
            if not authorization or not authorization[:7].lower() == "bearer ":
                raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer llmaas-...'.")
            cached = self.tokens.verify(authorization[7:].strip(" \t"))  # as the lane: HTTP's own whitespace only
            record = cached.record
            known = self._principals.get(record.id)
            if known is not None and known[0] is cached and not self.tokens.due_for_rotation(record):
                return known[1]
            tier = self.config.tier(record.tier)
        except TenancyError as exc:
            self.audit.append(status=exc.status, reason=exc.reason, client=client, request_id=request_id)
            raise
        except ValueError:  # a token whose tier left the config
            self.audit.append(status=401, reason="auth", client=client, request_id=request_id)
            raise AuthenticationError("This API key's tier is no longer configured.") from None
        principal = Principal(record.id, record.tenant, tier, cached.patterns)
        if rotate and self.tokens.due_for_rotation(record):
            # Rare (once per max age per token), so its blocking commit on this path is acceptable.
            rotated = self.tokens.rotate_if_due(record)
            if rotated is not None:
                secret, _, old = rotated
                principal.rotation_headers = [("x-llmaas-new-api-key", secret),
                                              ("x-llmaas-api-key-expires", rfc3339(old.expires_at or 0.0))]
                return principal
            fresh = self.tokens.lookup(record.id)  # a concurrent request rotated it first
            record = fresh.record if fresh is not None else record
        if record.rotated_to is not None:
            principal.rotation_headers = [("x-llmaas-api-key-rotated", record.rotated_to),
                                          ("x-llmaas-api-key-expires", rfc3339(record.expires_at or 0.0))]
        if record is cached.record:
            self._principals[record.id] = (cached, principal)
        return principal

    def local_principal(self) -> Principal:
        """The caller under `--no-auth`: the local tenant, every model."""
        return Principal("local", LOCAL_TENANT, self.config.tier(LOCAL_TIER), ModelPatterns(["*"]))

    def visible_models(self, principal: Principal) -> list[str]:
        """Catalog models this principal may use, for /v1/models (with `catalog.card_fields`)."""
        return [name for name in self.catalog.names() if principal.patterns.allows(name)]

    # -- stage 2: may it, now ------------------------------------------------------------------------
    def admit(self, principal: Principal, model: str, *, prompt_tokens: int, max_tokens: int | None,
              n: int = 1, request_id: str = "", client: str | None = None) -> Admission:
        """Permission, lifecycle and limits, in that order; raises a TenancyError (recorded in the
        audit trail, carrying the x-ratelimit-* and Retry-After headers on a 429).

        Reserves prompt_tokens + n x max_tokens (max_tokens None: what the tier allows per request,
        and that is what `admission.max_tokens` then says to pass to the engine)."""
        try:
            if model not in self.catalog:  # unknown: 404 for everyone, like OpenAI
                raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
            if not principal.patterns.allows(model):
                raise PermissionDenied(f"This API key is not allowed to use the model `{model}`.", param="model")
            lifecycle = self.catalog.check(model)
            tier = principal.tier
            if max_tokens is None:
                completion = max(0, (tier.max_tokens_per_request - prompt_tokens) // max(n, 1))
            else:
                completion = max_tokens
            prices = self.config.prices(model, tier)
            grant = self.limiter.admit(principal.tenant, tier, prompt_tokens + n * completion,
                                       worst_case_cost(prompt_tokens, n * completion, prices))
        except TenancyError as exc:
            if not exc.headers:  # the x-ratelimit-* headers go on every response to a known tenant
                exc.headers = self.limiter.snapshot(principal.tenant, principal.tier)
            self.audit.append(status=exc.status, reason=exc.reason, tenant=principal.tenant,
                              token_id=principal.token_id, client=client, model=model, request_id=request_id,
                              input_tokens=prompt_tokens)
            raise
        return Admission(principal, model, request_id, client, grant, lifecycle, prices, completion,
                         time.perf_counter())

    def refuse_unread(self, principal: Principal, status: int, *, request_id: str = "",
                      client: str | None = None) -> list[tuple[str, str]]:
        """A known caller's request refused before its fields could be read (a body that is no JSON,
        or not the request's shape): audited as such, reserving nothing; returns the
        x-ratelimit-* headers its answer carries, as every answer to a known tenant does."""
        self.audit.append(status=status, reason="invalid_request", tenant=principal.tenant,
                          token_id=principal.token_id, client=client, request_id=request_id)
        return self.limiter.snapshot(principal.tenant, principal.tier)

    # -- stage 3: settle ---------------------------------------------------------------------------
    def finish(self, admission: Admission, counts: Counts, status: int = 200, *, verdict: str | None = None,
               rules_version: str | None = None, latency_s: float | None = None, prompt: str | None = None,
               reason: str | None = None) -> Future[None]:
        """Reconciles the limits with exact counts and writes the ledger row and audit record in one
        transaction. Await the future (asyncio.wrap_future) before the response's last byte: once
        it resolves the row survives a kill -9. Aborted requests pass what they generated."""
        cost = admission.cost_eur = cost_eur(counts, admission.prices)
        self.limiter.reconcile(admission.grant, counts.total, cost)
        latency = time.perf_counter() - admission.started if latency_s is None else latency_s
        p = admission.principal
        usage = UsageRow(request_id=admission.request_id, time=self.clock.time(), tenant=p.tenant, token_id=p.token_id,
                         model=admission.model, input_tokens=counts.input, cached_input_tokens=counts.cached_input,
                         output_tokens=counts.output, reasoning_tokens=counts.reasoning, cost_eur=cost,
                         status=status, latency_ms=latency * 1000.0)
        reason = reason or ("ok" if status < 400 else "error")
        return self.audit.append(status=status, reason=reason, tenant=p.tenant,
                                 token_id=p.token_id, client=admission.client, model=admission.model,
                                 input_tokens=counts.input, output_tokens=counts.output, verdict=verdict,
                                 rules_version=rules_version, request_id=admission.request_id, prompt=prompt,
                                 usage=usage)

    def refuse(self, admission: Admission, error: TenancyError | None = None, *, status: int = 400,
               reason: str = "security", verdict: str | None = None, rules_version: str | None = None,
               prompt: str | None = None) -> Future[None]:
        """A request refused after admission (the security stage blocked it): gives back its
        reservation, records a zero-cost ledger row and the refusal."""
        if error is not None:
            status, reason = error.status, error.reason
        self.limiter.reconcile(admission.grant, 0, 0.0)
        p = admission.principal
        usage = UsageRow(request_id=admission.request_id, time=self.clock.time(), tenant=p.tenant, token_id=p.token_id,
                         model=admission.model, input_tokens=0, cached_input_tokens=0, output_tokens=0,
                         reasoning_tokens=0, cost_eur=0.0, status=status,
                         latency_ms=(time.perf_counter() - admission.started) * 1000.0)
        return self.audit.append(status=status, reason=reason, tenant=p.tenant, token_id=p.token_id,
                                 client=admission.client, model=admission.model, verdict=verdict,
                                 rules_version=rules_version, request_id=admission.request_id, prompt=prompt,
                                 usage=usage)
