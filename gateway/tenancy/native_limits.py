"""The tier limits of rate_limit.py on the native table that the gateway's native lane shares
(csrc/gateway/rate_limits.h): the same rules, the same calls, the same errors and headers.

One table holds every (tenant, tier) state; each is checked and taken under its own mutex, by this
Python path or by the lane's thread, so a tenant's limits hold exactly across both. States are
made here (the month's spend comes from the ledger), never dropped, and numbered: the lane's token
entries carry the number (gateway/lane_tenancy.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from gateway.tenancy.clock import Clock
from gateway.tenancy.rate_limit import month_start, next_month_start, refusal, too_large
from gateway.tenancy.tiers import Tier

try:
    from gateway import _native
except ImportError:  # not built (a source checkout without its extension): rate_limit.py serves
    _native = None

HEADER_NAMES = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
# The table's verdicts (rate_limits.h Verdict), as refusal() names them.
_ADMITTED, _NEW_MONTH = 0, 5
_KINDS = {1: "requests", 2: "tokens", 3: "concurrency", 4: "budget"}


def available() -> bool:
    return _native is not None


@dataclass(slots=True)
class NativeGrant:
    """What one admitted request holds until it is reconciled."""

    index: int
    tokens: int
    cost_eur: float
    headers: list[tuple[str, str]]
    done: bool = False


class NativeRateLimiter:
    def __init__(self, clock: Clock, spent_since: Callable[[str, float], float]) -> None:
        assert _native is not None
        self._clock = clock
        self._spent_since = spent_since  # (tenant, since) -> EUR already in the ledger
        self.table = _native.Limits()
        self._indexes: dict[tuple[str, str], int] = {}
        self.keys: list[tuple[str, str]] = []  # (tenant, tier name) by state number
        self._create_lock = threading.Lock()
        self._settle_lock = threading.Lock()  # a grant is reconciled once, whoever asks

    def state_index(self, tenant: str, tier: Tier) -> int:
        key = (tenant, tier.name)
        index = self._indexes.get(key)
        if index is None:
            with self._create_lock:
                index = self._indexes.get(key)
                if index is None:
                    now = self._clock.time()
                    start = month_start(now)
                    index = self.table.add(tier.requests_per_minute, tier.tokens_per_minute, tier.concurrent_requests,
                                           tier.monthly_budget_eur, now, start, next_month_start(now),
                                           self._spent_since(tenant, start))
                    assert index == len(self.keys)
                    self.keys.append(key)
                    self._indexes[key] = index
        return index

    def admit(self, tenant: str, tier: Tier, tokens: int, cost_eur: float) -> NativeGrant:
        """Takes one request, `tokens` tokens and `cost_eur` of budget, or raises (taking nothing)."""
        error = too_large(tier, tokens)
        if error is not None:
            raise error
        index = self._indexes.get((tenant, tier.name))
        if index is None:
            index = self.state_index(tenant, tier)
        now = self._clock.time()
        verdict, wait, spent, values = self.table.admit(index, now, tokens, cost_eur)
        if verdict == _NEW_MONTH:
            start = month_start(now)
            self.table.new_month(index, start, next_month_start(now), self._spent_since(tenant, start))
            verdict, wait, spent, values = self.table.admit(index, now, tokens, cost_eur)
        headers = list(zip(HEADER_NAMES, values))
        if verdict != _ADMITTED:
            raise refusal(_KINDS[verdict], tier, tokens, wait, spent, headers)
        return NativeGrant(index, tokens, cost_eur, headers)

    def snapshot(self, tenant: str, tier: Tier) -> list[tuple[str, str]]:
        """The x-ratelimit-* headers as they stand, taking nothing (for refusals before admission)."""
        return list(zip(HEADER_NAMES, self.table.snapshot(self.state_index(tenant, tier), self._clock.time())))

    def reconcile(self, grant: NativeGrant, tokens: int, cost_eur: float) -> None:
        """Settles a grant with exact counts (0 and 0 for a request refused after admission)."""
        with self._settle_lock:
            if grant.done:
                return
            grant.done = True
        self.table.reconcile(grant.index, self._clock.time(), grant.tokens, tokens, grant.cost_eur, cost_eur)
