from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.tenancy import BudgetExceeded, Counts, FakeClock, RateLimited, RequestTooLarge, Tenancy, Tier
from gateway.tenancy import rate_limit
from gateway.tenancy import native_limits
from gateway.tenancy.native_limits import NativeRateLimiter
from gateway.tenancy.rate_limit import Bucket, RateLimiter, duration

THREADS = 48


def tier(**overrides: float) -> Tier:
    limits = dict(requests_per_minute=10**6, tokens_per_minute=10**9, concurrent_requests=10**6,
                  max_tokens_per_request=10**6, monthly_budget_eur=10.0**9)
    limits.update(overrides)
    return Tier(name="t", **limits)  # type: ignore[arg-type]


class SlowBucket(Bucket):
    """Yields the GIL on every read of its level: without the per-state lock, threads would all
    pass a check before any of them takes, and lose each other's updates."""

    @property  # type: ignore[override]
    def level(self) -> float:
        value = Bucket.level.__get__(self)  # type: ignore[attr-defined]
        time.sleep(0.0001)
        return value

    @level.setter
    def level(self, value: float) -> None:
        Bucket.level.__set__(self, value)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def eager_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def hammer(admit: Callable[[], object]) -> tuple[list[object], list[Exception]]:
    """Runs `admit` from THREADS threads released at the same instant."""
    barrier = threading.Barrier(THREADS)
    granted: list[object] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            g = admit()
            with lock:
                granted.append(g)
        except (RateLimited, BudgetExceeded) as exc:
            with lock:
                refused.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return granted, refused


@pytest.fixture(autouse=True)
def slow_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter builds SlowBuckets: in place before any thread can see a new state (replacing
    them after it is published would itself lose updates, racing the limiter's lock-free lookup)."""
    monkeypatch.setattr(rate_limit, "Bucket", SlowBucket)


LimiterFactory = Callable[..., "RateLimiter | NativeRateLimiter"]


# The native table is built by setup.py; a source checkout without its extension tests Python's.
needs_native = pytest.mark.skipif(not native_limits.available(), reason="gateway._native is not built")


@pytest.fixture(params=["python", pytest.param("native", marks=needs_native)])
def make_limiter(request: pytest.FixtureRequest) -> LimiterFactory:
    """Each test runs on rate_limit.py and on the native table the gateway's lane shares."""
    kind = RateLimiter if request.param == "python" else NativeRateLimiter

    def make(clock: FakeClock, spent: float = 0.0) -> RateLimiter | NativeRateLimiter:
        return kind(clock, lambda tenant, since: spent)
    return make


def test_requests_per_minute_admits_exactly_n(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    t, rl = tier(requests_per_minute=7), make_limiter(clock)
    granted, refused = hammer(lambda: rl.admit("acme", t, 1, 0.0))
    assert len(granted) == 7 and len(refused) == THREADS - 7
    exc = refused[0]
    assert isinstance(exc, RateLimited) and exc.type == "requests" and exc.status == 429
    h = dict(exc.headers)
    assert h["x-ratelimit-remaining-requests"] == "0" and h["x-ratelimit-limit-requests"] == "7"
    assert int(h["retry-after"]) == 9  # one request refills in 60/7 s
    clock.advance(int(h["retry-after"]))  # a client that waits as told gets in
    granted, _ = hammer(lambda: rl.admit("acme", t, 1, 0.0))
    assert len(granted) == 1
    # Another tenant has its own allowance.
    assert rl.admit("other", t, 1, 0.0)


def test_tokens_per_minute_reserve_then_reconcile(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    t, rl = tier(tokens_per_minute=1000), make_limiter(clock)
    granted, refused = hammer(lambda: rl.admit("acme", t, 300, 0.0))
    assert len(granted) == 3  # 900 reserved; a fourth would need 1200
    assert all(isinstance(e, RateLimited) and e.type == "tokens" for e in refused)
    for g in granted:
        rl.reconcile(g, 50, 0.0)  # each used 50 of its 300: 750 come back
    rl.reconcile(granted[0], 50, 0.0)  # settling twice gives nothing back twice
    granted, _ = hammer(lambda: rl.admit("acme", t, 300, 0.0))
    assert len(granted) == 2  # 1000 - 150 = 850 left: two more of 300


def test_usage_beyond_the_estimate_puts_the_bucket_in_debt(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    t, rl = tier(tokens_per_minute=600), make_limiter(clock)
    g = rl.admit("acme", t, 100, 0.0)
    rl.reconcile(g, 900, 0.0)  # the estimate was wrong by 800
    with pytest.raises(RateLimited) as info:
        rl.admit("acme", t, 1, 0.0)
    assert int(dict(info.value.headers)["retry-after"]) == 31  # 301 tokens at 10/s


def test_concurrent_requests_admits_exactly_n(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    t, rl = tier(concurrent_requests=4), make_limiter(clock)
    granted, refused = hammer(lambda: rl.admit("acme", t, 1, 0.0))
    assert len(granted) == 4 and len(refused) == THREADS - 4
    rl.reconcile(granted[0], 1, 0.0)
    granted2, _ = hammer(lambda: rl.admit("acme", t, 1, 0.0))
    assert len(granted2) == 1


def test_monthly_budget_counts_ledger_and_in_flight(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    t, rl = tier(monthly_budget_eur=1.0), make_limiter(clock, spent=0.2)
    granted, refused = hammer(lambda: rl.admit("acme", t, 1, 0.25))
    assert len(granted) == 3  # 0.2 spent + 3 x 0.25 reserved = 0.95
    assert all(isinstance(e, BudgetExceeded) and e.code == "insufficient_quota" for e in refused)
    rl.reconcile(granted[0], 1, 0.01)  # it cost far less than its worst case
    assert len(hammer(lambda: rl.admit("acme", t, 1, 0.25))[0]) == 1  # 0.21 + 0.5 + 0.25 = 0.96: one fits
    rl.reconcile(granted[1], 1, 0.01)


def test_budget_resets_with_the_month(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    t, rl = tier(monthly_budget_eur=1.0), make_limiter(clock)
    g = rl.admit("acme", t, 1, 0.9)
    rl.reconcile(g, 1, 0.9)
    with pytest.raises(BudgetExceeded) as info:
        rl.admit("acme", t, 1, 0.2)
    wait = int(dict(info.value.headers)["retry-after"])
    clock.advance(wait)
    rl.admit("acme", t, 1, 0.2)


def test_request_larger_than_the_tier_allows(clock: FakeClock, make_limiter: LimiterFactory) -> None:
    rl = make_limiter(clock)
    with pytest.raises(RequestTooLarge):
        rl.admit("acme", tier(max_tokens_per_request=100), 101, 0.0)
    with pytest.raises(RequestTooLarge):
        rl.admit("acme", tier(tokens_per_minute=100), 101, 0.0)  # could never be admitted


@pytest.mark.parametrize("seconds,text", [(0.0, "0ms"), (0.0201, "21ms"), (1.0, "1s"), (59.2, "1m0s"),
                                          (360, "6m0s"), (3723, "1h2m3s")])
def test_reset_duration_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_on_every_admitted_response(tenancy: Tenancy) -> None:
    secret, _ = tenancy.tokens.create("acme", "small")
    p = tenancy.authenticate(f"Bearer {secret}")
    a = tenancy.admit(p, "qwen3:8b", prompt_tokens=100, max_tokens=100)
    h = dict(a.headers())
    assert h == {
        "x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "12s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "800",
        "x-ratelimit-reset-tokens": "12s",
    }
    assert a.max_tokens == 100 and a.priority == 1
    tenancy.finish(a, Counts(100, 0, 20, 0)).result()
    b = tenancy.admit(p, "qwen3:8b", prompt_tokens=10, max_tokens=None)  # None: what the tier allows
    assert b.max_tokens == 490
    assert dict(b.headers())["x-ratelimit-remaining-tokens"] == str(1000 - 120 - 500)


def test_n_choices_reserve_n_completions(tenancy: Tenancy) -> None:
    secret, _ = tenancy.tokens.create("acme", "small")
    p = tenancy.authenticate(f"Bearer {secret}")
    a = tenancy.admit(p, "qwen3:8b", prompt_tokens=50, max_tokens=100, n=3)
    assert dict(a.headers())["x-ratelimit-remaining-tokens"] == "650"
    tenancy.finish(a, Counts(50, 0, 240, 0)).result()  # three choices' exact output
    b = tenancy.admit(p, "qwen3:8b", prompt_tokens=50, max_tokens=None, n=2)
    assert b.max_tokens == 225  # (500 - 50) // 2 per choice


@needs_native
def test_native_table_matches_python_step_for_step(clock: FakeClock) -> None:
    """The same random admissions, settlements and waits on both: the same verdicts, headers and messages."""
    import random

    rng = random.Random(7)
    t = tier(requests_per_minute=40, tokens_per_minute=5000, concurrent_requests=6, monthly_budget_eur=0.5)
    python, native = RateLimiter(clock, lambda tenant, since: 0.1), NativeRateLimiter(clock, lambda tenant, since: 0.1)
    held: list[tuple[object, object]] = []
    for _ in range(600):
        step = rng.random()
        if step < 0.55:
            tokens, cost = rng.randint(1, 900), rng.choice([0.0, 0.01, 0.05])
            outcomes = []
            for rl in (python, native):
                try:
                    outcomes.append(rl.admit("acme", t, tokens, cost))
                except (RateLimited, BudgetExceeded, RequestTooLarge) as exc:
                    outcomes.append(exc)
            a, b = outcomes
            assert isinstance(a, Exception) == isinstance(b, Exception)
            if isinstance(a, Exception):
                assert type(a) is type(b)
                assert (str(a), a.headers) == (str(b), b.headers)  # type: ignore[attr-defined]
            else:
                assert a.headers == b.headers  # type: ignore[union-attr]
                held.append((a, b))
        elif step < 0.85 and held:
            a, b = held.pop(rng.randrange(len(held)))
            used, cost = rng.randint(0, 1200), rng.choice([0.0, 0.004, 0.02])
            python.reconcile(a, used, cost)  # type: ignore[arg-type]
            native.reconcile(b, used, cost)  # type: ignore[arg-type]
        else:
            clock.advance(rng.choice([0.001, 0.3, 2.0, 17.5]))
        assert python.snapshot("acme", t) == native.snapshot("acme", t)
