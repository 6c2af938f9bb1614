"""Per-tenant prompt-security policies set by operators through the admin API.

Each layer of prompt security (structure, patterns, behaviour) runs `on`, `flag_only` or `off`
(security.Policy). The gateway config sets a default and per-tenant policies
(`[security.tenants.NAME]`); a policy set here, through the admin API, wins over the config's
for its tenant until it is deleted. Policies are persisted in the store and read from memory on
each request, so a change takes effect on the tenant's next request. Only the admin API writes
them: no request of a tenant reaches this object.

One gateway process sees its own changes at once; another process on the same database (a second
gateway) re-reads the whole table once `refresh_s` has passed since it last did, on the next
request that asks, so a change made anywhere applies everywhere within that delay (as a token's
revocation does, gateway/tenancy/tokens.py).
"""

from __future__ import annotations

import logging

import msgspec

import security
from gateway.tenancy.clock import Clock
from gateway.tenancy.store import PolicyRecord, Store

log = logging.getLogger(__name__)


def _modes(policy: security.Policy) -> dict[str, str]:
    return msgspec.structs.asdict(policy)


class SecurityPolicies:
    def __init__(self, store: Store, clock: Clock, refresh_s: float = 2.0) -> None:
        self._store, self._clock = store, clock
        self._refresh_s = refresh_s
        self._records: dict[str, PolicyRecord] = {}
        self._policies: dict[str, security.Policy] = {}
        self._loaded_at = 0.0
        self._ignored: set[str] = set()
        self._load()

    def _load(self) -> None:
        records: dict[str, PolicyRecord] = {}
        policies: dict[str, security.Policy] = {}
        for record in self._store.policies():
            try:
                policy = msgspec.convert(record.modes, security.Policy)
            except msgspec.ValidationError as exc:  # a layer since renamed: the config's policy applies
                if record.tenant not in self._ignored:  # said once, not at every reload
                    self._ignored.add(record.tenant)
                    log.error("security policy of tenant %r ignored: %s", record.tenant, exc)
                continue
            records[record.tenant], policies[record.tenant] = record, policy
        self._records, self._policies = records, policies
        self._loaded_at = self._clock.time()

    def _fresh(self) -> None:
        if self._clock.time() - self._loaded_at > self._refresh_s:
            self._load()  # what another process changed since (a small table, a read every refresh_s)

    def get(self, tenant: str | None) -> security.Policy | None:
        """The operator's policy for `tenant`, None when none was set (the config's applies)."""
        self._fresh()
        return self._policies.get(tenant or "")

    def record(self, tenant: str) -> PolicyRecord | None:
        self._fresh()  # the admin API's view, as current as the requests' (a gateway may not run security)
        return self._records.get(tenant)

    def records(self) -> list[PolicyRecord]:
        self._fresh()
        return [self._records[t] for t in sorted(self._records)]

    def put(self, tenant: str, policy: security.Policy) -> PolicyRecord:
        """Persists then applies (blocks until committed: call it off the event loop)."""
        record = PolicyRecord(tenant=tenant, modes=_modes(policy), updated_at=self._clock.time())
        self._store.put_policy(record).result()
        self._records[tenant], self._policies[tenant] = record, policy
        return record

    def delete(self, tenant: str) -> bool:
        """Back to the config's policy; False when there was none to delete."""
        existed = self._store.delete_policy(tenant).result()
        self._records.pop(tenant, None)
        self._policies.pop(tenant, None)
        return existed
