"""Tier limits: requests/min, tokens/min, concurrent requests, max tokens per request, monthly budget.

Requests and tokens per minute are token buckets (capacity = the per-minute limit, refilled
continuously at limit/60 per second), which is O(1) per request and lets a minute's allowance be
used in a burst but never more. Each (tenant, tier) has one state guarded by its own lock; admit
checks every limit and then consumes them all under that lock, so concurrent requests cannot slip
past a limit between the check and the take: exactly as many are admitted as the limits allow.

Tokens: admission reserves an estimate (prompt tokens + max completion tokens); `reconcile` gives
back what the request did not use (or charges what it used beyond, leaving the bucket in debt).
Budget: the month's spend (loaded from the ledger the first time a tenant is seen in a month) plus
the worst-case cost of requests in flight must stay within the tier's monthly budget.

A fleet of gateways would keep these counters in Redis behind the same two calls. Where the
gateway's native lane runs the tenant stages, both it and the Python path use one native table of
these states instead (native_limits.py, csrc/gateway/rate_limits.h): the same rules, shared.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gateway.tenancy.clock import Clock
from gateway.tenancy.errors import BudgetExceeded, RateLimited, RequestTooLarge
from gateway.tenancy.tiers import Tier


@dataclass(slots=True)
class Bucket:
    capacity: float
    rate: float  # refill per second
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def reset_in(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)


@dataclass(slots=True)
class LimitState:
    requests: Bucket
    tokens: Bucket
    month_start: float
    month_end: float
    spent_eur: float
    # The two x-ratelimit-limit-* headers, made with the buckets: only the levels vary per response.
    limit_headers: tuple[tuple[str, str], tuple[str, str]]
    inflight: int = 0
    reserved_eur: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class Grant:
    """What one admitted request holds until it is reconciled."""

    state: LimitState
    tier: Tier
    tokens: int
    cost_eur: float
    headers: list[tuple[str, str]]
    done: bool = False


def month_start(now: float) -> float:
    d = datetime.fromtimestamp(now, timezone.utc)
    return datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp()


def next_month_start(now: float) -> float:
    d = datetime.fromtimestamp(now, timezone.utc)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=timezone.utc).timestamp()


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def too_large(tier: Tier, tokens: int) -> RequestTooLarge | None:
    """The refusal of a request larger than one tier's request may be, if it is."""
    if tokens > tier.max_tokens_per_request or tokens > tier.tokens_per_minute:
        return RequestTooLarge(
            f"Request too large: {tokens} tokens (the prompt, and max_tokens for each of the n choices) exceed this "
            f"tier's limit of "
            f"{min(tier.max_tokens_per_request, tier.tokens_per_minute)} per request.", param="max_tokens")
    return None


def refusal(kind: str, tier: Tier, tokens: int, wait: float, spent_eur: float,
            limit_headers: list[tuple[str, str]]) -> RateLimited | BudgetExceeded:
    """The error of a limit reached: `kind` is requests, tokens, concurrency or budget."""
    if kind == "budget":
        return BudgetExceeded(f"Monthly budget of {tier.monthly_budget_eur:.2f} EUR reached "
                              f"({spent_eur:.4f} EUR spent this month).",
                              headers=[("retry-after", str(math.ceil(wait))), *limit_headers])
    if kind == "requests":
        message = f"Rate limit reached: {tier.requests_per_minute} requests per minute."
    elif kind == "tokens":
        message = f"Rate limit reached: {tier.tokens_per_minute} tokens per minute (this request reserves {tokens})."
    else:
        message = f"Too many concurrent requests: this tier allows {tier.concurrent_requests}."
    retry = max(1, math.ceil(wait))  # Retry-After is whole seconds; never tell a client "0"
    return RateLimited(message, retry_after=wait, kind="tokens" if kind == "tokens" else "requests",
                       headers=[("retry-after", str(retry)), *limit_headers])


def headers(state: LimitState) -> list[tuple[str, str]]:
    """The six x-ratelimit-* headers of a (tenant, tier) as its buckets stand."""
    r, t = state.requests, state.tokens
    limit_requests, limit_tokens = state.limit_headers
    return [
        limit_requests,
        ("x-ratelimit-remaining-requests", str(int(r.level)) if r.level > 0.0 else "0"),
        ("x-ratelimit-reset-requests", duration(r.reset_in())),
        limit_tokens,
        ("x-ratelimit-remaining-tokens", str(int(t.level)) if t.level > 0.0 else "0"),
        ("x-ratelimit-reset-tokens", duration(t.reset_in())),
    ]


class RateLimiter:
    def __init__(self, clock: Clock, spent_since: Callable[[str, float], float]) -> None:
        self._clock = clock
        self._spent_since = spent_since  # (tenant, since) -> EUR already in the ledger
        self._states: dict[tuple[str, str], LimitState] = {}
        self._create_lock = threading.Lock()

    def _state(self, tenant: str, tier: Tier, now: float) -> LimitState:
        key = (tenant, tier.name)
        state = self._states.get(key)
        if state is None:
            with self._create_lock:
                state = self._states.get(key)
                if state is None:
                    rpm, tpm = float(tier.requests_per_minute), float(tier.tokens_per_minute)
                    start = month_start(now)
                    limits = (("x-ratelimit-limit-requests", str(tier.requests_per_minute)),
                              ("x-ratelimit-limit-tokens", str(tier.tokens_per_minute)))
                    state = LimitState(requests=Bucket(rpm, rpm / 60.0, rpm, now),
                                       tokens=Bucket(tpm, tpm / 60.0, tpm, now), month_start=start,
                                       month_end=next_month_start(now), spent_eur=self._spent_since(tenant, start),
                                       limit_headers=limits)
                    self._states[key] = state
        return state

    def admit(self, tenant: str, tier: Tier, tokens: int, cost_eur: float) -> Grant:
        """Takes one request, `tokens` tokens and `cost_eur` of budget, or raises (taking nothing)."""
        error = too_large(tier, tokens)
        if error is not None:
            raise error
        now = self._clock.time()
        state = self._states.get((tenant, tier.name)) or self._state(tenant, tier, now)
        with state.lock:
            if now >= state.month_end:
                state.month_start, state.month_end = month_start(now), next_month_start(now)
                state.spent_eur = self._spent_since(tenant, state.month_start)
            state.requests.refill(now)
            state.tokens.refill(now)
            if state.requests.level < 1.0:
                raise refusal("requests", tier, tokens, state.requests.wait_for(1.0), 0.0, headers(state))
            if state.tokens.level < tokens:
                raise refusal("tokens", tier, tokens, state.tokens.wait_for(tokens), 0.0, headers(state))
            if state.inflight >= tier.concurrent_requests:
                raise refusal("concurrency", tier, tokens, 1.0, 0.0, headers(state))
            if state.spent_eur + state.reserved_eur + cost_eur > tier.monthly_budget_eur:
                raise refusal("budget", tier, tokens, state.month_end - now, state.spent_eur, headers(state))
            state.requests.level -= 1.0
            state.tokens.level -= tokens
            state.inflight += 1
            state.reserved_eur += cost_eur
            return Grant(state, tier, tokens, cost_eur, headers(state))

    def snapshot(self, tenant: str, tier: Tier) -> list[tuple[str, str]]:
        """The x-ratelimit-* headers as they stand, taking nothing (for refusals before admission)."""
        now = self._clock.time()
        state = self._state(tenant, tier, now)
        with state.lock:
            state.requests.refill(now)
            state.tokens.refill(now)
            return headers(state)

    def reconcile(self, grant: Grant, tokens: int, cost_eur: float) -> None:
        """Settles a grant with exact counts (0 and 0 for a request refused after admission)."""
        state = grant.state
        with state.lock:
            if grant.done:
                return
            grant.done = True
            state.tokens.refill(self._clock.time())
            state.tokens.level = min(state.tokens.capacity, state.tokens.level + grant.tokens - tokens)
            state.inflight -= 1
            state.reserved_eur -= grant.cost_eur
            state.spent_eur += cost_eur
