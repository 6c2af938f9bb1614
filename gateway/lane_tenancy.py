"""The tenant stages on the gateway's native lane (csrc/gateway/tenants.h): what Python tells the
lane, and what it takes back from it.

The lane serves, without the interpreter, each request that passes every tenant check (a valid
key, a permitted model in plain service, the limits) and hands every other one to the Python server,
whose tenancy stage decides again, answers and audits. For that the lane holds a view of the
tenancy, which this module builds and pushes at once after a token changes through this process,
and within a second after one changes through another (the CLI, another gateway: the store counts
token writes, and the count is read every second), as in tokens.py's cache:
- each usable token: its id, tenant, HMAC, tier, expiry, revocation, when it is due to rotate
  (Python rotates it: the lane hands that request over), the lane's models it may use, and the
  notice headers of a rotated token;
- the tiers, the prices of each model and tier, and when each model is plainly in service (live,
  served, before its deprecation notice: a deprecated model's answers carry a warning that
  Python adds);
- the limits are not copied: both sides use one native table (gateway/tenancy/native_limits.py).

Every tick the lane records the usage it journaled for each request it served: its ledger rows
and audit records, in an audit chain of its own, committed by native code (csrc/gateway/lane_ledger.h)
while the interpreter runs on. Back comes the tenant and cost of what it finished, for the metrics.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time

from gateway.stages.tenancy_stage import TenancyStage
from gateway.tenancy.clock import SystemClock
from gateway.tenancy.native_limits import NativeRateLimiter
from gateway.tenancy.permissions import ModelPatterns
from gateway.tenancy.service import LOCAL_TENANT, LOCAL_TIER, Tenancy, rfc3339
from gateway.tenancy.sqlite_store import SqliteStore

try:
    from gateway._native import sqlite_version as _native_sqlite_version
except ImportError:  # not built: native_lane.unavailable() says so first
    _native_sqlite_version = None

REFRESH_S = 1.0
log = logging.getLogger(__name__)
_NO_HASH = bytes(32)


def unavailable(tenancy: Tenancy) -> str | None:
    """Why the lane cannot run these tenant stages, or None when it can."""
    if tenancy.audit.keeps_prompts:
        return "the audit trail keeps prompt text ([tenancy] prompt_retention)"
    if not isinstance(tenancy.limiter, NativeRateLimiter):
        return "the native limit table is not built"
    if not isinstance(tenancy.clock, SystemClock):
        return "the tenancy runs on a test clock"
    if not isinstance(tenancy.store, SqliteStore):
        # The lane commits its ledger rows and audit records into the SQLite file itself.
        return "the store is not SQLite (the lane writes its ledger into an SQLite file)"
    if not tenancy.store.journaled:
        return "the store has no ledger journal (synchronous=FULL, or another process owns it)"
    if _native_sqlite_version is not None and not _native_sqlite_version():
        return "gateway._native was built without SQLite (libsqlite3-dev)"
    if _native_sqlite_version is not None and _native_sqlite_version() != sqlite3.sqlite_version:
        # Two copies of SQLite in one process would not see each other's locks on the file.
        return f"its SQLite ({_native_sqlite_version()}) is not Python's ({sqlite3.sqlite_version})"
    return None


class LaneTenancy:
    def __init__(self, stage: TenancyStage, plane: object, models: list[str]) -> None:
        """`models`: the lane's models, in the order it numbers them."""
        tenancy = self.tenancy = stage.tenancy
        assert unavailable(tenancy) is None
        self._require_auth = stage.require_auth
        self._plane = plane
        self._models = models
        self._limiter: NativeRateLimiter = tenancy.limiter  # type: ignore[assignment]
        # Whatever a killed gateway's lane left there was recorded when the store opened.
        self.chain = f"{tenancy.audit.chain}-lane"
        plane.enable_tenancy(self._limiter.table, tenancy.tokens.pepper,  # type: ignore[attr-defined]
                             tenancy.lane_journal_path, tenancy.store.path, self.chain)  # type: ignore[attr-defined]
        self._checked_at = -math.inf
        self._version = -1  # the store's tokens_version the view was built from
        self._stale = True
        self._failing: str | None = None  # the ledger's last commit error, until one succeeds
        tenancy.tokens.listeners.append(self.mark_stale)
        self.sync()

    def mark_stale(self) -> None:
        self._stale = True

    def sync(self) -> None:
        """Pushes a new view when one is due."""
        now = time.monotonic()
        if self._stale or now - self._checked_at >= REFRESH_S:
            self._checked_at = now
            # Read before the tokens: a write in between moves it again, so the next check pushes.
            version = self.tenancy.store.tokens_version()
            if self._stale or version != self._version:
                self._stale = False
                self._version = version
                self._push()

    def close(self) -> None:
        self.record()
        self.tenancy.tokens.listeners.remove(self.mark_stale)

    def names(self, limit_index: int) -> tuple[str, str]:
        """(tenant, tier) of a limit state the lane reports."""
        return self._limiter.keys[limit_index] if limit_index >= 0 else ("", "")

    def record(self) -> None:
        """Commits what the lane journaled, the interpreter's lock released meanwhile (any thread).
        Should that fail (another writer holding the database past the busy timeout, a full disk),
        the entries stay in the lane's journal, durable, and are taken again next time: said
        once, not every tick."""
        try:
            self._plane.ledger_flush()  # type: ignore[attr-defined]
        except RuntimeError as exc:
            if str(exc) != self._failing:
                log.error("the native lane's ledger rows wait in its journal: %s", exc)
            self._failing = str(exc)
            return
        if self._failing is not None:
            log.warning("the native lane's ledger rows are committed again")
            self._failing = None

    def _push(self) -> None:
        tenancy = self.tenancy
        config, catalog, limiter = tenancy.config, tenancy.catalog, self._limiter
        tier_names = sorted(config.tiers)
        tier_index = {name: i for i, name in enumerate(tier_names)}
        now = tenancy.clock.time()
        max_age = config.token_policy.max_age_s
        tokens = []
        # Tokens share few pattern lists: each is matched against the lane's models once a push
        # (compiling the patterns costs ~20 us, 100 ms for 5,000 tokens each with its own).
        allowed: dict[tuple[str, ...], bytes | None] = {}
        for record in tenancy.store.list_tokens():
            if (record.revoked_at is not None and record.revoked_at <= now) or \
                    (record.expires_at is not None and now >= record.expires_at) or record.tier not in tier_index:
                continue  # Python refuses these
            tier = config.tiers[record.tier]
            key = tuple(record.models)
            if key not in allowed:
                try:
                    patterns = ModelPatterns(record.models)
                    allowed[key] = bytes(patterns.allows(m) for m in self._models)
                except ValueError:  # a record no CLI would write: Python answers its requests
                    allowed[key] = None
            models = allowed[key]
            if models is None:
                continue
            headers = ""
            if record.rotated_to is not None:
                headers = (f"x-llmaas-api-key-rotated: {record.rotated_to}\r\n"
                           f"x-llmaas-api-key-expires: {rfc3339(record.expires_at or 0.0)}\r\n")
            rotate_at = record.created_at + max_age if max_age > 0 and record.rotated_to is None else math.inf
            tokens.append((record.id, record.tenant, record.secret_hash, tier_index[record.tier],
                           limiter.state_index(record.tenant, tier),
                           math.inf if record.expires_at is None else record.expires_at,
                           math.inf if record.revoked_at is None else record.revoked_at, rotate_at,
                           models, headers))
        local = None
        if not self._require_auth and LOCAL_TIER in tier_index:
            local = ("local", LOCAL_TENANT, _NO_HASH, tier_index[LOCAL_TIER],
                     limiter.state_index(LOCAL_TENANT, config.tiers[LOCAL_TIER]), math.inf, math.inf, math.inf,
                     bytes([1]) * len(self._models), "")
        serve_from, serve_until = [], []
        for name in self._models:
            entry = catalog.get(name)
            if entry is None or not entry.hosts:
                serve_from.append(math.inf)
                serve_until.append(math.inf)
            else:
                serve_from.append(entry.live_at)
                serve_until.append(min(entry.notice_at, entry.retired_at))
        tiers = [(config.tiers[n].priority, config.tiers[n].max_tokens_per_request, config.tiers[n].tokens_per_minute)
                 for n in tier_names]
        prices = []
        for name in self._models:
            for n in tier_names:
                p = config.prices(name, config.tiers[n])
                prices.append((p.input, p.cached_input, p.output, p.reasoning))
        self._plane.set_tenant_view(self._require_auth, tokens, local, tiers, serve_from,  # type: ignore[attr-defined]
                                    serve_until, prices)
