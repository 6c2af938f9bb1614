"""The gateway purges prompt text past its retention period on its own, while it runs (purger.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import pytest

from gateway.fleet.config import GatewayConfig, ModelEntry, SecuritySection
from gateway.gateway_server import Gateway
from gateway.tenancy import Catalog, FakeClock, SqliteStore, Tenancy
from gateway.tenancy.audit import AuditTrail
from gateway.tenancy.encryption import PromptCipher, load_key, new_key
from gateway.tenancy.purger import MAX_INTERVAL_S, MIN_INTERVAL_S, PromptPurger, purge_interval
from gateway.tenancy.tiers import TierConfig
from tests.gateway.fake_engine import FakeEngine

RETENTION_S = 3600.0
TICK_S = 0.01  # the purge interval under test: the real one is a minute at the least


def prompts(store: SqliteStore) -> dict[str, bool]:
    """Whether each record still holds its prompt text, by request id."""
    store.flush()
    return {r.request_id: r.prompt is not None for r in store.audit_records() if r.prompt_digest is not None}


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the purger did not get there in time"
        await asyncio.sleep(TICK_S)


def test_the_interval_is_a_tenth_of_the_retention_within_bounds() -> None:
    assert purge_interval(90 * 86400.0) == MAX_INTERVAL_S
    assert purge_interval(6000.0) == 600.0
    assert purge_interval(5.0) == MIN_INTERVAL_S


def test_a_running_gateway_purges_prompts_past_their_retention(store: SqliteStore, config: TierConfig,
                                                               clock: FakeClock) -> None:
    tenancy = Tenancy(store, config, Catalog.load(clock), clock, audit_key=load_key(new_key()),
                      prompt_retention_s=RETENTION_S)
    tenancy.audit.append(status=200, reason="ok", request_id="old", prompt="last quarter's figures").result()
    clock.advance(RETENTION_S - 600)
    tenancy.audit.append(status=200, reason="ok", request_id="fresh", prompt="this quarter's figures").result()
    assert prompts(store) == {"old": True, "fresh": True}

    async def main() -> None:
        engine = FakeEngine("a")
        await engine.start()
        config = GatewayConfig(models=[ModelEntry(name="qwen3:8b", hosts=[engine.url])],
                               security=SecuritySection(enabled=False))
        gateway = Gateway(config, tenancy=tenancy, purge_interval_s=TICK_S)
        await gateway.start()
        try:
            await asyncio.sleep(5 * TICK_S)
            assert prompts(store) == {"old": True, "fresh": True}  # nothing is past its retention yet
            clock.advance(1200)  # "old" 4200 s old, "fresh" 600 s
            await until(lambda: not prompts(store)["old"])
            assert prompts(store) == {"old": False, "fresh": True}
            assert tenancy.audit.verify() == []  # the chain covers the digest, not the purged text
        finally:
            await gateway.stop()  # closes the tenancy, once the purger has stopped
            await engine.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_no_purger_without_a_retention_period(tenancy: Tenancy) -> None:
    config = GatewayConfig(models=[ModelEntry(name="qwen3:8b", hosts=["http://127.0.0.1:9"])],
                           security=SecuritySection(enabled=False))
    assert Gateway(config, tenancy=tenancy).purger is None


class FlakyStore:
    """A store whose purges fail while `failures` lasts, then purge as the real one does."""

    def __init__(self, store: SqliteStore, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def purge_prompts(self, before: float) -> Future[int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("database or disk is full")
        return self.store.purge_prompts(before)


def test_a_failed_purge_is_logged_and_tried_again(store: SqliteStore, clock: FakeClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    flaky = FlakyStore(store, failures=2)
    cipher = PromptCipher(load_key(new_key()) or b"")
    trail = AuditTrail(flaky, clock, cipher, retention_s=RETENTION_S)  # type: ignore[arg-type]
    trail.append(status=200, reason="ok", request_id="old", prompt="hello").result()
    clock.advance(RETENTION_S + 1)
    purger = PromptPurger(trail, interval_s=TICK_S)

    async def main() -> None:
        purger.start()
        try:
            await until(lambda: not prompts(store)["old"])
        finally:
            await purger.stop()
    with caplog.at_level(logging.INFO, logger="gateway.tenancy.purger"):
        asyncio.run(asyncio.wait_for(main(), 30))
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2 and "database or disk is full" in (failures[0].exc_text or "")
    assert any("purged the text of 1 prompt(s)" in r.getMessage() for r in caplog.records)


def test_stop_ends_the_wait_at_once(store: SqliteStore, clock: FakeClock) -> None:
    purger = PromptPurger(AuditTrail(store, clock, retention_s=90 * 86400.0))
    assert purger.interval_s == MAX_INTERVAL_S

    async def main() -> float:
        purger.start()
        await asyncio.sleep(TICK_S)
        started = time.monotonic()
        await purger.stop()
        return time.monotonic() - started
    assert asyncio.run(main()) < 1.0


def test_stop_lets_a_purge_under_way_finish(store: SqliteStore, clock: FakeClock) -> None:
    """A gateway closes its store right after stopping the purger: no purge may still be running."""
    class SlowStore(FlakyStore):
        def purge_prompts(self, before: float) -> Future[int]:
            entered.set()
            time.sleep(0.2)
            done.append(before)
            return self.store.purge_prompts(before)

    entered, done = threading.Event(), []
    purger = PromptPurger(AuditTrail(SlowStore(store, 0), clock, retention_s=RETENTION_S),  # type: ignore[arg-type]
                          interval_s=TICK_S)

    async def main() -> None:
        purger.start()
        await asyncio.to_thread(entered.wait, 5.0)
        await purger.stop()
        assert done, "stop returned while a purge was still running"
    asyncio.run(asyncio.wait_for(main(), 30))
